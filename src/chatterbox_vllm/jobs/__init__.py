"""Long-form speech jobs: a book, chapter or article turned into one audio file (and subtitles) in the background.

`/v1/audio/speech` stops at a few thousand characters and answers while the client waits. A job takes up to a
million characters (pasted, or a .txt/.md/.epub upload), is accepted at once, and runs piece by piece at a lower
priority than interactive requests. Its state lives in SQLite and each finished piece's audio on disk, so a server
that is killed resumes every unfinished job from its last finished piece.

Modules: `types` (the shapes the others share), `documents` (uploads and text into chapters), `subtitles` (WebVTT
and SRT), `export` (pieces into one audio file with chapter marks), `store` (SQLite and the piece files), `runner`
(the background work and its fairness to interactive requests).
"""
