"""Plain helpers of the tests (paths, checkpoints, server processes, comparisons), imported by test modules as
`from support.<module> import ...`. Fixtures live in tests/conftest.py and the plugins it lists, never here: a
fixture imported into a test module by name is a separate fixture in each module that imports it."""
