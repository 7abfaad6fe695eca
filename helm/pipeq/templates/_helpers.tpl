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

{{/* Where job files live, as EnvVars of the API and the workers (storage.*). */}}
{{- define "pipeq.storageEnv" -}}
{{- $s := .Values.storage -}}
{{- if eq $s.type "s3" }}
{{- if not $s.s3.bucket }}{{ fail "storage.s3.bucket is required with storage.type=s3" }}{{ end }}
- {name: PIPEQ_STORAGE, value: {{ printf "s3://%s/%s" $s.s3.bucket $s.s3.prefix | trimSuffix "/" | quote }}}
- {name: AWS_REGION, value: {{ $s.s3.region | quote }}}
{{- with $s.s3.endpoint }}
- {name: AWS_ENDPOINT_URL, value: {{ . | quote }}}
{{- end }}
{{- with $s.s3.publicEndpoint }}
- {name: PIPEQ_S3_PUBLIC_ENDPOINT, value: {{ . | quote }}}
{{- end }}
{{- with $s.s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: {{ . }}, key: AWS_ACCESS_KEY_ID}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ . }}, key: AWS_SECRET_ACCESS_KEY}}
{{- end }}
- {name: PIPEQ_PRESIGNED_UPLOAD_BYTES, value: {{ $s.presignedUploadBytes | int64 | quote }}}
{{- else }}
- {name: PIPEQ_DATA_DIR, value: {{ .Values.data.mountPath | quote }}}
{{- end }}
{{- with $s.referenceHosts }}
- {name: PIPEQ_REFERENCE_HOSTS, value: {{ . | quote }}}
{{- end }}
{{- end -}}

{{/* The ServiceAccount annotations of storage.s3 (IRSA / workload identity), if any. */}}
{{- define "pipeq.storageAnnotations" -}}
{{- if and (eq .Values.storage.type "s3") .Values.storage.s3.serviceAccountAnnotations }}
annotations: {{- toYaml .Values.storage.s3.serviceAccountAnnotations | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "pipeq.dataClaim" -}}
{{- .Values.data.existingClaim | default (printf "%s-data" (include "pipeq.fullname" .)) -}}
{{- end -}}

{{- define "pipeq.tokenSecret" -}}
{{- .Values.api.auth.existingSecret | default (printf "%s-api-token" (include "pipeq.fullname" .)) -}}
{{- end -}}
