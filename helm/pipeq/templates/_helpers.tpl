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

{{/* repository:tag, or repository@digest when a digest is given */}}
{{- define "pipeq.imageRef" -}}
{{- if .digest -}}{{ .repository }}@{{ .digest }}{{- else -}}{{ .repository }}:{{ .tag }}{{- end -}}
{{- end -}}
{{- define "pipeq.image" -}}{{ include "pipeq.imageRef" .Values.image }}{{- end -}}
{{- define "pipeq.workerImage" -}}{{ include "pipeq.imageRef" .Values.workerImage }}{{- end -}}

{{/* The chart's Redis Service (a ClusterIP Service; the StatefulSet's headless one is -redis-headless). */}}
{{- define "pipeq.redisHost" -}}{{ include "pipeq.fullname" . }}-redis{{- end -}}

{{/* The Secret with the chart's Redis password and URL: generated, or redis.auth.existingSecret. */}}
{{- define "pipeq.redisAuthSecret" -}}
{{- .Values.redis.auth.existingSecret | default (printf "%s-redis-auth" (include "pipeq.fullname" .)) -}}
{{- end -}}

{{/* (name, key) of the Secret holding the Redis URL every component uses, as a dict; empty
     when the URL is a plain value (the chart's Redis without auth, or redis.external.url). */}}
{{- define "pipeq.redisUrlSecret" -}}
{{- if .Values.redis.enabled -}}
{{- if .Values.redis.auth.enabled -}}
{{- dict "name" (include "pipeq.redisAuthSecret" .) "key" .Values.redis.auth.urlKey | toJson -}}
{{- else -}}{}{{- end -}}
{{- else if .Values.redis.external.existingSecret -}}
{{- dict "name" .Values.redis.external.existingSecret "key" .Values.redis.external.secretKey | toJson -}}
{{- else -}}{}{{- end -}}
{{- end -}}

{{/* The Redis URL as a plain value, when no Secret holds it. */}}
{{- define "pipeq.redisUrl" -}}
{{- if .Values.redis.enabled -}}redis://{{ include "pipeq.redisHost" . }}:{{ .Values.redis.port }}/0{{- else -}}{{ .Values.redis.external.url }}{{- end -}}
{{- end -}}

{{/* PIPEQ_REDIS_URL as an EnvVar: from its Secret when there is one (no RBAC needed: the
     kubelet injects it), so the password is never in a pod spec. */}}
{{- define "pipeq.redisEnv" -}}
{{- $secret := include "pipeq.redisUrlSecret" . | fromJson -}}
- name: PIPEQ_REDIS_URL
{{- if $secret }}
  valueFrom:
    secretKeyRef: {name: {{ $secret.name }}, key: {{ $secret.key }}}
{{- else }}
  value: {{ include "pipeq.redisUrl" . | quote }}
{{- end }}
{{- end -}}

{{/* imagePullSecrets and priorityClassName of a pod spec, when set. */}}
{{- define "pipeq.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* nodeSelector, tolerations, affinity of one component (api, operator, redis), when set. */}}
{{- define "pipeq.scheduling" -}}
{{- range $key := list "nodeSelector" "tolerations" "affinity" }}
{{- with index $.component $key }}
{{ $key }}: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The ServiceAccount annotations of a pipeq pod's account: serviceAccountAnnotations,
     plus storage.s3's with s3 (for the API and the workers, s3=true). */}}
{{- define "pipeq.saAnnotations" -}}
{{- $a := deepCopy (.root.Values.serviceAccountAnnotations | default dict) -}}
{{- if and .s3 (eq .root.Values.storage.type "s3") -}}
{{- $a = merge $a (.root.Values.storage.s3.serviceAccountAnnotations | default dict) -}}
{{- end -}}
{{- with $a }}
annotations: {{- toYaml . | nindent 2 }}
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


{{- define "pipeq.dataClaim" -}}
{{- .Values.data.existingClaim | default (printf "%s-data" (include "pipeq.fullname" .)) -}}
{{- end -}}

{{- define "pipeq.tokenSecret" -}}
{{- .Values.api.auth.existingSecret | default (printf "%s-api-token" (include "pipeq.fullname" .)) -}}
{{- end -}}

{{/* The API's auth and quota settings as EnvVars, each only when set. */}}
{{- define "pipeq.apiAuthEnv" -}}
{{- $auth := .Values.api.auth -}}
{{- if $auth.enabled }}
- name: PIPEQ_API_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ include "pipeq.tokenSecret" . }}, key: {{ $auth.secretKey }}}
{{- end }}
{{- with $auth.oidc }}
{{- if .issuer }}
- {name: PIPEQ_OIDC_ISSUER, value: {{ .issuer | quote }}}
{{- with .audience }}
- {name: PIPEQ_OIDC_AUDIENCE, value: {{ . | quote }}}
{{- end }}
- {name: PIPEQ_OIDC_GROUPS_CLAIM, value: {{ .groupsClaim | quote }}}
{{- with .adminGroups }}
- {name: PIPEQ_ADMIN_GROUPS, value: {{ join "," . | quote }}}
{{- end }}
{{- with .userGroups }}
- {name: PIPEQ_USER_GROUPS, value: {{ join "," . | quote }}}
{{- end }}
{{- with .webClientId }}
- {name: PIPEQ_OIDC_WEB_CLIENT_ID, value: {{ . | quote }}}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.quotas }}
{{- if not (kindIs "invalid" .activeJobs) }}
- {name: PIPEQ_QUOTA_ACTIVE_JOBS, value: {{ .activeJobs | int64 | quote }}}
{{- end }}
{{- if not (kindIs "invalid" .submissionsPerMinute) }}
- {name: PIPEQ_QUOTA_SUBMISSIONS_PER_MINUTE, value: {{ .submissionsPerMinute | int64 | quote }}}
{{- end }}
{{- with .groups }}
- {name: PIPEQ_QUOTA_GROUPS, value: {{ toJson . | quote }}}
{{- end }}
{{- end }}
{{- include "pipeq.fairShareEnv" . }}
{{- end -}}

{{/* PIPEQ_FAIR_SHARE_WEIGHTS (the API and the workers), when set. */}}
{{- define "pipeq.fairShareEnv" -}}
{{- with .Values.fairShare.weights }}
- {name: PIPEQ_FAIR_SHARE_WEIGHTS, value: {{ toJson . | quote }}}
{{- end }}
{{- end -}}
