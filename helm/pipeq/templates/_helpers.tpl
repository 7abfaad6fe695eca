{{- define "pipeq.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "pipeq.labels" -}}
app.kubernetes.io/name: pipeq
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pipeq.selector" -}}
app.kubernetes.io/name: pipeq
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pipeq.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag }}{{- end -}}
{{- define "pipeq.workerImage" -}}{{ .Values.workerImage.repository }}:{{ .Values.workerImage.tag }}{{- end -}}

{{/* The Redis URL everyone uses: the chart's Redis, or the external one. */}}
{{- define "pipeq.redisUrl" -}}
{{- if .Values.redis.enabled -}}redis://{{ include "pipeq.fullname" . }}-redis:{{ .Values.redis.port }}/0{{- else -}}{{ .Values.redis.external.url }}{{- end -}}
{{- end -}}

{{/* PIPEQ_REDIS_URL as an EnvVar: from the external Secret when one is named (no RBAC needed: the kubelet injects it). */}}
{{- define "pipeq.redisEnv" -}}
- name: PIPEQ_REDIS_URL
{{- if and (not .Values.redis.enabled) .Values.redis.external.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.secretKey }}
{{- else }}
  value: {{ include "pipeq.redisUrl" . | quote }}
{{- end }}
{{- end -}}

{{- define "pipeq.dataClaim" -}}
{{- .Values.data.existingClaim | default (printf "%s-data" (include "pipeq.fullname" .)) -}}
{{- end -}}

{{- define "pipeq.tokenSecret" -}}
{{- .Values.api.auth.existingSecret | default (printf "%s-api-token" (include "pipeq.fullname" .)) -}}
{{- end -}}
