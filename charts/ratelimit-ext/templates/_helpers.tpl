{{/* Names ------------------------------------------------------------------ */}}

{{- define "ratelimit-ext.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name; "ratelimit-ext" when the release is named so. */}}
{{- define "ratelimit-ext.fullname" -}}
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

{{- define "ratelimit-ext.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ratelimit-ext.controlPlaneName" -}}
{{- printf "%s-control-plane" (include "ratelimit-ext.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ratelimit-ext.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ratelimit-ext.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels ----------------------------------------------------------------- */}}

{{- define "ratelimit-ext.labels" -}}
helm.sh/chart: {{ include "ratelimit-ext.chart" . }}
app.kubernetes.io/name: {{ include "ratelimit-ext.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selects the server pods only, never the control plane's. */}}
{{- define "ratelimit-ext.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ratelimit-ext.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "ratelimit-ext.controlPlaneSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ratelimit-ext.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end }}

{{/* Image ------------------------------------------------------------------ */}}

{{- define "ratelimit-ext.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Directories ------------------------------------------------------------

Without the admin API the config directory is the read-only projected
volume (policy ConfigMap + API key Secret) itself. The admin API and the
control plane write policy files into their config directory, so there the
config directory is a writable volume (emptyDir, or the control plane's
PVC) with the projected volume read-only inside it under chart/, and the
audit log is a hidden file in it (the loader skips dot-entries, as it skips
generated/.history). The loader reads subdirectories; the watcher sees the
kubelet's ..data swaps in them.
*/}}

{{- define "ratelimit-ext.readOnlyConfigDir" -}}/etc/ratelimit-ext/config{{- end }}
{{- define "ratelimit-ext.writableConfigDir" -}}/var/lib/ratelimit-ext/config{{- end }}
{{- define "ratelimit-ext.auditLog" -}}/var/lib/ratelimit-ext/config/.audit.jsonl{{- end }}
{{- define "ratelimit-ext.adminDir" -}}/etc/ratelimit-ext/admin{{- end }}
{{- define "ratelimit-ext.adminTLSDir" -}}/etc/ratelimit-ext/admin-tls{{- end }}
{{- define "ratelimit-ext.adminCADir" -}}/etc/ratelimit-ext/admin-ca{{- end }}
{{- define "ratelimit-ext.redisTLSDir" -}}/etc/ratelimit-ext/redis-tls{{- end }}

{{/* The server's --config. */}}
{{- define "ratelimit-ext.serverConfigDir" -}}
{{- if .Values.admin.enabled }}{{ include "ratelimit-ext.writableConfigDir" . }}{{ else }}{{ include "ratelimit-ext.readOnlyConfigDir" . }}{{ end }}
{{- end }}

{{- define "ratelimit-ext.policyConfigMapName" -}}
{{- default (printf "%s-policy" (include "ratelimit-ext.fullname" .)) .Values.policy.existingConfigMap }}
{{- end }}

{{/*
The API key Secret: apiKeys.existingSecret, or <fullname>-api-keys, which the
chart makes from apiKeys.keys, or which may be made by hand later (it is an
optional source of the config volume).
*/}}
{{- define "ratelimit-ext.apiKeysSecretName" -}}
{{- default (printf "%s-api-keys" (include "ratelimit-ext.fullname" .)) .Values.apiKeys.existingSecret }}
{{- end }}

{{/* The admin token Secret, shared by the servers and the control plane. */}}
{{- define "ratelimit-ext.adminSecretName" -}}
{{- default (printf "%s-admin" (include "ratelimit-ext.fullname" .)) .Values.admin.existingSecret }}
{{- end }}

{{- define "ratelimit-ext.adminSecretKey" -}}
{{- if .Values.admin.existingSecret }}{{ .Values.admin.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/* Volumes ------------------------------------------------------------------ */}}

{{/* The policy ConfigMap and the API key Secret as one directory. */}}
{{- define "ratelimit-ext.configVolume" -}}
- name: config
  projected:
    defaultMode: 0440
    sources:
      - configMap:
          name: {{ include "ratelimit-ext.policyConfigMapName" . }}
      - secret:
          name: {{ include "ratelimit-ext.apiKeysSecretName" . }}
          # API key digests join the policy while this Secret exists: made
          # from apiKeys.keys, or by hand with
          # kubectl create secret generic NAME --from-file=api_keys.yaml
          optional: {{ empty .Values.apiKeys.existingSecret }}
{{- end }}

{{- define "ratelimit-ext.commonVolumes" -}}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
{{- if and (ne .Values.store.mode "memory") .Values.store.tls.enabled .Values.store.tls.caSecret }}
- name: redis-tls
  secret:
    secretName: {{ .Values.store.tls.caSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.store.tls.caKey }}
        path: {{ .Values.store.tls.caKey }}
{{- end }}
{{- end }}

{{- define "ratelimit-ext.commonMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if and (ne .Values.store.mode "memory") .Values.store.tls.enabled .Values.store.tls.caSecret }}
- name: redis-tls
  mountPath: {{ include "ratelimit-ext.redisTLSDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* The admin token, and the admin TLS files when configured. */}}
{{- define "ratelimit-ext.adminVolumes" -}}
- name: admin-token
  secret:
    secretName: {{ include "ratelimit-ext.adminSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ include "ratelimit-ext.adminSecretKey" . }}
        path: token
{{- with .Values.admin.tls.secretName }}
- name: admin-tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- with .Values.admin.tls.clientCASecret }}
- name: admin-ca
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "ratelimit-ext.adminMounts" -}}
- name: admin-token
  mountPath: {{ include "ratelimit-ext.adminDir" . }}
  readOnly: true
{{- if .Values.admin.tls.secretName }}
- name: admin-tls
  mountPath: {{ include "ratelimit-ext.adminTLSDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.admin.tls.clientCASecret }}
- name: admin-ca
  mountPath: {{ include "ratelimit-ext.adminCADir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Store ------------------------------------------------------------------ */}}

{{/* Whether the store has a password, from either source. */}}
{{- define "ratelimit-ext.storeHasPassword" -}}
{{- if and (ne .Values.store.mode "memory") (or .Values.store.existingSecret .Values.store.password) }}true{{- end }}
{{- end }}

{{- define "ratelimit-ext.storeSecretName" -}}
{{- default (printf "%s-store" (include "ratelimit-ext.fullname" .)) .Values.store.existingSecret }}
{{- end }}

{{/* The key of the percent-encoded password in the store Secret. */}}
{{- define "ratelimit-ext.storeSecretKey" -}}
{{- if .Values.store.existingSecret }}{{ .Values.store.existingSecretPasswordKey }}{{ else }}password-urlencoded{{ end }}
{{- end }}

{{/*
RATELIMIT_EXT_STORE. The password is $(REDIS_PASSWORD), which the kubelet
expands from the variable of that name defined before it (a secretKeyRef).
*/}}
{{- define "ratelimit-ext.storeURL" -}}
{{- $store := .Values.store }}
{{- if eq $store.mode "memory" }}memory
{{- else }}
{{- $scheme := ternary "rediss" "redis" $store.tls.enabled }}
{{- $login := "" }}
{{- if include "ratelimit-ext.storeHasPassword" . }}
{{- $login = printf "%s:$(REDIS_PASSWORD)@" (urlquery $store.username) }}
{{- else if $store.username }}
{{- $login = printf "%s@" (urlquery $store.username) }}
{{- end }}
{{- $query := dict }}
{{- range $key, $value := $store.options }}
{{- $_ := set $query $key (toString $value) }}
{{- end }}
{{- if and $store.tls.enabled $store.tls.caSecret }}
{{- $_ := set $query "ssl_ca_certs" (printf "%s/%s" (include "ratelimit-ext.redisTLSDir" .) $store.tls.caKey) }}
{{- end }}
{{- $pairs := list }}
{{- range $key := keys $query | sortAlpha }}
{{- $pairs = append $pairs (printf "%s=%s" (urlquery $key) (urlquery (get $query $key))) }}
{{- end }}
{{- $suffix := ternary "" (printf "?%s" (join "&" $pairs)) (empty $pairs) }}
{{- if eq $store.mode "redis" }}
{{- printf "%s://%s%s:%d/%d%s" $scheme $login $store.redis.host (int $store.redis.port) (int $store.redis.db) $suffix }}
{{- else }}
{{- printf "%s+cluster://%s%s%s" $scheme $login (join "," $store.cluster.nodes) $suffix }}
{{- end }}
{{- end }}
{{- end }}

{{/* RATELIMIT_EXT_REPLICAS: the pod count the "local" failure policy divides by. */}}
{{- define "ratelimit-ext.replicasHint" -}}
{{- if not (kindIs "invalid" .Values.server.replicas) }}{{ .Values.server.replicas }}
{{- else if .Values.autoscaling.enabled }}{{ .Values.autoscaling.minReplicas }}
{{- else }}{{ .Values.replicaCount }}
{{- end }}
{{- end }}

{{/* The server's store variables. */}}
{{- define "ratelimit-ext.storeEnv" -}}
{{- if include "ratelimit-ext.storeHasPassword" . }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "ratelimit-ext.storeSecretName" . }}
      key: {{ include "ratelimit-ext.storeSecretKey" . }}
{{- end }}
- name: RATELIMIT_EXT_STORE
  value: {{ include "ratelimit-ext.storeURL" . | quote }}
{{- end }}

{{/* Checks across values that values.schema.json cannot express clearly. */}}
{{- define "ratelimit-ext.validate" -}}
{{- if and (not .Values.policy.existingConfigMap) (hasKey .Values.policy.files .Values.apiKeys.fileName) .Values.apiKeys.keys (not .Values.apiKeys.existingSecret) }}
{{- fail (printf "policy.files.%s and the API key Secret would be the same file in the config directory: rename one (apiKeys.fileName)" .Values.apiKeys.fileName) }}
{{- end }}
{{- if and .Values.store.existingSecret .Values.store.password }}
{{- fail "store.password and store.existingSecret are both set: use one" }}
{{- end }}
{{- if and .Values.admin.existingSecret .Values.admin.token }}
{{- fail "admin.token and admin.existingSecret are both set: use one" }}
{{- end }}
{{- if and (gt (int .Values.server.workers) 1) (eq .Values.store.mode "memory") }}
{{- fail "server.workers above 1 needs a shared store: set store.mode to redis or cluster" }}
{{- end }}
{{- if and .Values.controlPlane.publishTo (not .Values.admin.enabled) }}
{{- fail "controlPlane.publishTo pushes to the servers' admin API: set admin.enabled" }}
{{- end }}
{{- end }}
