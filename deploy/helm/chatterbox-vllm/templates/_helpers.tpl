{{/*
The chart's name, truncated to the 63 characters a DNS label allows.
*/}}
{{- define "chatterbox-vllm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: <release>-<chart>, or the release name alone when it already contains the chart's.
*/}}
{{- define "chatterbox-vllm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
chart-version, for the helm.sh/chart label.
*/}}
{{- define "chatterbox-vllm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chatterbox-vllm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chatterbox-vllm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "chatterbox-vllm.labels" -}}
helm.sh/chart: {{ include "chatterbox-vllm.chart" . }}
{{ include "chatterbox-vllm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: tts-server
{{- end }}

{{- define "chatterbox-vllm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chatterbox-vllm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "chatterbox-vllm.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/*
Claim of the model cache: the existing one, or the one this chart creates.
*/}}
{{- define "chatterbox-vllm.modelsClaimName" -}}
{{- if .Values.persistence.existingClaim }}
{{- .Values.persistence.existingClaim }}
{{- else }}
{{- printf "%s-models" (include "chatterbox-vllm.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "chatterbox-vllm.voicesClaimName" -}}
{{- if .Values.voices.persistence.existingClaim }}
{{- .Values.voices.persistence.existingClaim }}
{{- else }}
{{- printf "%s-voices" (include "chatterbox-vllm.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
storageClassName of a claim: omitted for "" (the cluster's default class), "" for "-" (no class).
Called with the persistence dict.
*/}}
{{- define "chatterbox-vllm.storageClass" -}}
{{- if .storageClass }}
{{- if eq "-" (toString .storageClass) }}
storageClassName: ""
{{- else }}
storageClassName: {{ .storageClass | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The environment the server reads, as a dict: the settings with their own values keys, then `env` (which wins).
*/}}
{{- define "chatterbox-vllm.configData" -}}
{{- $data := dict
  "CHATTERBOX_MODEL" (toString .Values.chatterbox.model)
  "CHATTERBOX_PRESET" (toString .Values.chatterbox.preset)
  "CHATTERBOX_HOST" "0.0.0.0"
  "CHATTERBOX_PORT" (toString .Values.chatterbox.port)
  "CHATTERBOX_VOICES_DIR" (toString .Values.voices.mountPath)
  "HF_HOME" (printf "%s/huggingface" (trimSuffix "/" (toString .Values.persistence.mountPath)))
}}
{{- if .Values.chatterbox.revision }}
{{- $_ := set $data "CHATTERBOX_REVISION" (toString .Values.chatterbox.revision) }}
{{- end }}
{{- range $name, $value := .Values.env }}
{{- $_ := set $data $name (toString $value) }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/*
The replica range of autoscaling, refused when it is empty (either engine).
*/}}
{{- define "chatterbox-vllm.checkReplicaRange" -}}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- end }}

{{/*
PromQL for KEDA's trigger: autoscaling.keda.query, or the sum of autoscaling.metricName over this Deployment's
pods (<fullname>-<template hash>-<suffix>) in the release's namespace.
*/}}
{{- define "chatterbox-vllm.kedaQuery" -}}
{{- if .Values.autoscaling.keda.query }}
{{- .Values.autoscaling.keda.query }}
{{- else }}
{{- printf "sum(%s{namespace=\"%s\", pod=~\"%s-[a-z0-9]+-[a-z0-9]+\"})" .Values.autoscaling.metricName .Release.Namespace (include "chatterbox-vllm.fullname" .) }}
{{- end }}
{{- end }}
