{{/*
The chart name, shortened to 63 characters (a DNS label).
*/}}
{{- define "sseplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of the release's sseplane objects. The release name alone when it
already contains the chart name (release "sseplane" gives "sseplane").
*/}}
{{- define "sseplane.fullname" -}}
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
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "sseplane.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels every object of the chart carries.
*/}}
{{- define "sseplane.commonLabels" -}}
helm.sh/chart: {{ include "sseplane.chart" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sseplane
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels of the sseplane objects.
*/}}
{{- define "sseplane.labels" -}}
{{ include "sseplane.selectorLabels" . }}
app.kubernetes.io/version: {{ include "sseplane.imageTag" . | quote }}
{{ include "sseplane.commonLabels" . }}
{{- end }}

{{/*
Selector labels of the sseplane pods (immutable once installed).
*/}}
{{- define "sseplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sseplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The image tag: image.tag, else the chart's appVersion.
*/}}
{{- define "sseplane.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion | toString }}
{{- end }}

{{/*
The sseplane image reference (a digest wins over the tag).
*/}}
{{- define "sseplane.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "sseplane.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
The service account the pods run as.
*/}}
{{- define "sseplane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sseplane.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the ClusterRole/ClusterRoleBinding (rbac.clusterScoped): cluster-wide
objects, so the namespace is part of the name.
*/}}
{{- define "sseplane.clusterRoleName" -}}
{{- printf "%s-%s" (include "sseplane.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The bundled Redis (redis.enabled): <release>-redis.
*/}}
{{- define "sseplane.redis.fullname" -}}
{{- printf "%s-redis" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sseplane.redis.selectorLabels" -}}
app.kubernetes.io/name: redis
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: backplane
{{- end }}

{{- define "sseplane.redis.labels" -}}
{{ include "sseplane.redis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.redis.image.tag | toString | quote }}
{{ include "sseplane.commonLabels" . }}
{{- end }}

{{/*
The bundled Jaeger (jaeger.enabled): <release>-jaeger.
*/}}
{{- define "sseplane.jaeger.fullname" -}}
{{- printf "%s-jaeger" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sseplane.jaeger.selectorLabels" -}}
app.kubernetes.io/name: jaeger
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: tracing
{{- end }}

{{- define "sseplane.jaeger.labels" -}}
{{ include "sseplane.jaeger.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.jaeger.image.tag | toString | quote }}
{{ include "sseplane.commonLabels" . }}
{{- end }}

{{/*
Whether the Deployment runs more than one pod (or may, with the autoscaler).
*/}}
{{- define "sseplane.multiReplica" -}}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.maxReplicas) 1 }}true{{ end }}
{{- else if gt (int .Values.replicaCount) 1 }}true
{{- end }}
{{- end }}

{{/*
Where the Redis URL comes from: "bundled", "secret", "url" or "" (the
in-memory backplane). Fails on a contradictory or unsafe choice.
*/}}
{{- define "sseplane.redis.mode" -}}
{{- $r := .Values.redis }}
{{- if $r.enabled }}
{{- if or $r.url $r.existingSecret }}
{{- fail "redis.enabled bundles a Redis: leave redis.url and redis.existingSecret empty, or set redis.enabled=false to use an external Redis" }}
{{- end }}
{{- print "bundled" }}
{{- else if $r.existingSecret }}
{{- if $r.url }}
{{- fail "set either redis.url or redis.existingSecret, not both" }}
{{- end }}
{{- if not $r.existingSecretKey }}
{{- fail "redis.existingSecret needs redis.existingSecretKey (the key holding the Redis URL)" }}
{{- end }}
{{- print "secret" }}
{{- else if $r.url }}
{{- print "url" }}
{{- else if include "sseplane.multiReplica" . }}
{{- fail "several replicas need a shared Redis: set redis.enabled=true, redis.url or redis.existingSecret (or replicaCount=1 for the in-memory backplane)" }}
{{- end }}
{{- end }}

{{/*
The OTLP endpoint: the bundled Jaeger, else otel.endpoint, else none.
*/}}
{{- define "sseplane.otelEndpoint" -}}
{{- if .Values.jaeger.enabled }}
{{- printf "http://%s:%d" (include "sseplane.jaeger.fullname" .) (int .Values.jaeger.service.otlpGrpcPort) }}
{{- else if .Values.otel.endpoint }}
{{- .Values.otel.endpoint }}
{{- end }}
{{- end }}

{{/*
A duration such as 20s, 1m30s or 500ms in whole seconds, rounded up.
*/}}
{{- define "sseplane.durationSeconds" -}}
{{- $ms := 0 }}
{{- range regexFindAll "[0-9]+(ms|s|m|h)" (toString .) -1 }}
{{- if hasSuffix "ms" . }}
{{- $ms = add $ms (trimSuffix "ms" . | int64) }}
{{- else if hasSuffix "s" . }}
{{- $ms = add $ms (mul (trimSuffix "s" . | int64) 1000) }}
{{- else if hasSuffix "m" . }}
{{- $ms = add $ms (mul (trimSuffix "m" . | int64) 60000) }}
{{- else if hasSuffix "h" . }}
{{- $ms = add $ms (mul (trimSuffix "h" . | int64) 3600000) }}
{{- end }}
{{- end }}
{{- div (add $ms 999) 1000 }}
{{- end }}

{{/*
The ChannelPolicy entries of .Values.policies as a list of
{name, spec, labels, annotations}: a map name -> spec (sorted by name), or a
list of {name, spec} items.
*/}}
{{- define "sseplane.policies" -}}
{{- $out := list }}
{{- if kindIs "map" .Values.policies }}
{{- range $name, $spec := .Values.policies }}
{{- if $spec }}
{{- $out = append $out (dict "name" $name "spec" $spec) }}
{{- end }}
{{- end }}
{{- else if .Values.policies }}
{{- range $i, $p := .Values.policies }}
{{- if not (and (kindIs "map" $p) $p.name $p.spec) }}
{{- fail (printf "policies[%d] needs a name and a spec" $i) }}
{{- end }}
{{- $out = append $out $p }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
Token auth (auth.*). Where the keys come from:
- the HS256 secret: auth.existingSecret, else (auth.enabled and no other key
  source) the chart-managed Secret <fullname>-auth, key jwt-secret;
- public keys: auth.publicKey / auth.jwks, from a Secret or a ConfigMap,
  mounted as files under /etc/sseplane/keys (reloaded when they change).
*/}}
{{- define "sseplane.auth.secretName" -}}
{{- printf "%s-auth" (include "sseplane.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sseplane.auth.keysDir" -}}
/etc/sseplane/keys
{{- end }}

{{/*
A key file source (auth.publicKey or auth.jwks, given as .src, named .what):
"secret", "configMap" or "". Fails when both are set.
*/}}
{{- define "sseplane.auth.fileSource" -}}
{{- if and .src.existingSecret .src.existingConfigMap }}
{{- fail (printf "auth.%s: set existingSecret or existingConfigMap, not both" .what) }}
{{- else if .src.existingSecret }}
{{- print "secret" }}
{{- else if .src.existingConfigMap }}
{{- print "configMap" }}
{{- end }}
{{- end }}

{{/*
Where SSEPLANE_JWT_SECRET comes from: "existing" (auth.existingSecret),
"managed" (generated into <fullname>-auth) or "" (none). Fails on a
contradictory choice.
*/}}
{{- define "sseplane.auth.jwtSecretMode" -}}
{{- $a := .Values.auth }}
{{- $publicKey := include "sseplane.auth.fileSource" (dict "src" $a.publicKey "what" "publicKey") }}
{{- $jwks := include "sseplane.auth.fileSource" (dict "src" $a.jwks "what" "jwks") }}
{{- if not $a.enabled }}
{{- if or $a.existingSecret $publicKey $jwks }}
{{- fail "auth.enabled=false turns token auth off: leave auth.existingSecret, auth.publicKey and auth.jwks empty (or set auth.enabled=true)" }}
{{- end }}
{{- else if $a.existingSecret }}
{{- print "existing" }}
{{- else if not (or $publicKey $jwks) }}
{{- print "managed" }}
{{- end }}
{{- end }}

{{/*
Whether any token key is configured ("true" or ""): auth is on.
*/}}
{{- define "sseplane.auth.on" -}}
{{- $a := .Values.auth }}
{{- if or (include "sseplane.auth.jwtSecretMode" .) (include "sseplane.auth.fileSource" (dict "src" $a.publicKey "what" "publicKey")) (include "sseplane.auth.fileSource" (dict "src" $a.jwks "what" "jwks")) }}true{{ end }}
{{- end }}

{{/*
Where SSEPLANE_ADMIN_TOKEN comes from: "existing", "managed" or "".
*/}}
{{- define "sseplane.auth.adminTokenMode" -}}
{{- $t := .Values.auth.adminToken }}
{{- if and $t.existingSecret $t.generate }}
{{- fail "auth.adminToken: set existingSecret or generate, not both" }}
{{- else if $t.existingSecret }}
{{- print "existing" }}
{{- else if $t.generate }}
{{- print "managed" }}
{{- end }}
{{- end }}

{{/*
The keys of the chart-managed Secret <fullname>-auth, as a JSON list.
*/}}
{{- define "sseplane.auth.managedKeys" -}}
{{- $keys := list }}
{{- if eq (include "sseplane.auth.jwtSecretMode" .) "managed" }}
{{- $keys = append $keys "jwt-secret" }}
{{- end }}
{{- if eq (include "sseplane.auth.adminTokenMode" .) "managed" }}
{{- $keys = append $keys "admin-token" }}
{{- end }}
{{- toJson $keys }}
{{- end }}

{{/*
Whether Helm renders against a cluster ("true" or ""): `lookup` returns an
empty map without one (helm template, lint, GitOps tools rendering with helm
template), while listing a namespace's Services always returns a list object
when it can reach the API server (even an empty one, even before the
namespace exists).
*/}}
{{- define "sseplane.clusterReachable" -}}
{{- if lookup "v1" "Service" .Release.Namespace "" }}true{{ end }}
{{- end }}

{{/*
Whether to render the chart-managed Secret ("true" or ""). Its values are
random, generated once and read back with `lookup` on every upgrade; a render
without a cluster cannot read them back (a new value each time), so it leaves
the Secret out (create it yourself) unless auth.generateOffline is true.
*/}}
{{- define "sseplane.auth.renderManagedSecret" -}}
{{- if include "sseplane.auth.managedKeys" . | fromJsonArray }}
{{- if or .Values.auth.generateOffline (lookup "v1" "Secret" .Release.Namespace (include "sseplane.auth.secretName" .)) (include "sseplane.clusterReachable" .) }}true{{ end }}
{{- end }}
{{- end }}

{{/*
A Secret key inside a kubectl jsonpath expression (dots escaped).
*/}}
{{- define "sseplane.jsonpathKey" -}}
{{- replace "." "\\." . }}
{{- end }}

{{/*
SSEPLANE_MAX_STREAMS_PER_CLIENT: limits.maxStreamsPerClient, else 1000 (the
binary's default), or 0 (no limit) behind the chart's Ingress, where every
client has the ingress controller's address.
*/}}
{{- define "sseplane.maxStreamsPerClient" -}}
{{- $v := .Values.limits.maxStreamsPerClient }}
{{- if not (kindIs "invalid" $v) }}
{{- $v | int64 }}
{{- else if .Values.ingress.enabled }}
{{- print 0 }}
{{- else }}
{{- print 1000 }}
{{- end }}
{{- end }}
