{{/* Names and labels. */}}
{{- define "mailstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mailstream.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "mailstream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "mailstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "frontend"). */}}
{{- define "mailstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailstream.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mailstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mailstream.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mailstream.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Secret names: the existing one or the chart's. */}}
{{- define "mailstream.kafkaSaslSecret" -}}
{{- default (printf "%s-kafka" (include "mailstream.fullname" .)) .Values.kafka.sasl.existingSecret -}}
{{- end -}}
{{- define "mailstream.redisSecret" -}}
{{- default (printf "%s-redis" (include "mailstream.fullname" .)) .Values.redis.existingSecret -}}
{{- end -}}
{{- define "mailstream.tlsSecret" -}}
{{- default (printf "%s-tls" (include "mailstream.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}
{{- define "mailstream.authSecret" -}}
{{- default (printf "%s-auth" (include "mailstream.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}
{{- define "mailstream.dkimSecret" -}}
{{- printf "%s-dkim" (include "mailstream.fullname" .) -}}
{{- end -}}

{{/* Whether Kafka SASL / Redis AUTH is on. */}}
{{- define "mailstream.kafkaSasl" -}}
{{- if hasPrefix "sasl_" .Values.kafka.securityProtocol }}true{{ end -}}
{{- end -}}
{{- define "mailstream.kafkaSsl" -}}
{{- if has .Values.kafka.securityProtocol (list "ssl" "sasl_ssl") }}true{{ end -}}
{{- end -}}
{{- define "mailstream.redisAuth" -}}
{{- if or .Values.redis.password .Values.redis.existingSecret }}true{{ end -}}
{{- end -}}

{{/*
The [kafka] and [redis] settings every program shares (issue 14's agreed
keys): security keys only when security is on, so a plaintext install renders
only the keys every release reads.  Secrets are files mounted from Secrets,
never values in the ConfigMap.
*/}}
{{- define "mailstream.connectionConfig" -}}
{{- $kafka := dict "brokers" .Values.kafka.brokers -}}
{{- if ne .Values.kafka.securityProtocol "plaintext" -}}
{{- $_ := set $kafka "security_protocol" .Values.kafka.securityProtocol -}}
{{- end -}}
{{- if include "mailstream.kafkaSasl" . -}}
{{- $_ := set $kafka "sasl_mechanism" .Values.kafka.sasl.mechanism -}}
{{- $_ := set $kafka "sasl_username" .Values.kafka.sasl.username -}}
{{- $_ := set $kafka "sasl_password_file" "/etc/mailstream/kafka-sasl/password" -}}
{{- end -}}
{{- if and (include "mailstream.kafkaSsl" .) .Values.kafka.tls.existingSecret -}}
{{- with .Values.kafka.tls -}}
{{- if .caKey }}{{ $_ := set $kafka "ssl_ca_file" "/etc/mailstream/kafka-tls/ca.crt" }}{{ end -}}
{{- if .certKey }}{{ $_ := set $kafka "ssl_cert_file" "/etc/mailstream/kafka-tls/tls.crt" }}{{ end -}}
{{- if .keyKey }}{{ $_ := set $kafka "ssl_key_file" "/etc/mailstream/kafka-tls/tls.key" }}{{ end -}}
{{- if .keyPasswordKey }}{{ $_ := set $kafka "ssl_key_password_file" "/etc/mailstream/kafka-tls/key.password" }}{{ end -}}
{{- end -}}
{{- end -}}
{{- $redis := dict "host" .Values.redis.host "port" .Values.redis.port -}}
{{- if include "mailstream.redisAuth" . -}}
{{- if .Values.redis.username }}{{ $_ := set $redis "username" .Values.redis.username }}{{ end -}}
{{- $_ := set $redis "password_file" "/etc/mailstream/redis/password" -}}
{{- end -}}
{{- toYaml (dict "kafka" $kafka "redis" $redis) -}}
{{- end -}}

{{/*
One INI file from {section: {key: value}}: sections and keys sorted, lists
comma-separated, booleans yes/no.  A line longer than the programs read
(MS_CONFIG_LINE_MAX, 198 characters) fails the render instead of the pod.
*/}}
{{- define "mailstream.ini" -}}
{{- range $section := keys . | sortAlpha }}
{{- $keys := get $ $section }}
[{{ $section }}]
{{- range $key := keys $keys | sortAlpha }}
{{- $v := get $keys $key }}
{{- $s := "" }}
{{- if kindIs "slice" $v }}{{ $s = join ", " $v }}
{{- else if kindIs "bool" $v }}{{ $s = ternary "yes" "no" $v }}
{{- else if kindIs "float64" $v }}{{ $s = ternary (printf "%d" (int64 $v)) (toString $v) (eq (float64 (int64 $v)) $v) }}
{{- else }}{{ $s = toString $v }}{{ end }}
{{- $line := printf "%s = %s" $key $s }}
{{- if gt (len $line) 198 }}{{ fail (printf "[%s] %s: the line is %d characters, the programs read at most 198 (use a file, e.g. [transport] map_file)" $section $key (len $line)) }}{{ end }}
{{ $line }}
{{- end }}
{{ end }}
{{- end -}}

{{/* Refuse the unsafe settings: PROXY without trusted balancers, relaying for the world. */}}
{{- define "mailstream.validate" -}}
{{- $open := list "0.0.0.0/0" "::/0" -}}
{{- if .Values.proxyProtocol.enabled -}}
{{- if not .Values.proxyProtocol.trustedCIDRs -}}
{{- fail "proxyProtocol.enabled needs proxyProtocol.trustedCIDRs: the load balancers' source ranges (anyone else could claim any client address)" -}}
{{- end -}}
{{- range .Values.proxyProtocol.trustedCIDRs }}{{ if has . $open }}{{ fail (printf "proxyProtocol.trustedCIDRs: %s would let anyone claim any client address" .) }}{{ end }}{{ end -}}
{{- end -}}
{{- range .Values.frontend.trustedNetworks }}{{ if has . $open }}{{ fail (printf "frontend.trustedNetworks: %s makes an open relay" .) }}{{ end }}{{ end -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (not (and .Values.tls.cert .Values.tls.key)) -}}
{{- fail "tls.enabled needs tls.existingSecret, or tls.cert and tls.key" -}}
{{- end -}}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) (not .Values.auth.passwd) -}}
{{- fail "auth.enabled needs auth.existingSecret or auth.passwd" -}}
{{- end -}}
{{- if and (include "mailstream.kafkaSasl" .) (not .Values.kafka.sasl.username) -}}
{{- fail (printf "kafka.securityProtocol %s needs kafka.sasl.username" .Values.kafka.securityProtocol) -}}
{{- end -}}
{{- if ne (empty .Values.kafka.tls.certKey) (empty .Values.kafka.tls.keyKey) -}}
{{- fail "kafka.tls.certKey and kafka.tls.keyKey go together (mutual TLS needs both)" -}}
{{- end -}}
{{- if and (include "mailstream.kafkaSasl" .) (not .Values.kafka.sasl.existingSecret) (not .Values.kafka.sasl.password) -}}
{{- fail (printf "kafka.securityProtocol %s needs kafka.sasl.existingSecret or kafka.sasl.password" .Values.kafka.securityProtocol) -}}
{{- end -}}
{{- end -}}

{{/* The pod and container security contexts (restricted Pod Security Standard). */}}
{{- define "mailstream.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- define "mailstream.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Volumes and mounts of the connection Secrets (both programs and the Job). */}}
{{- define "mailstream.connectionVolumes" -}}
{{- if include "mailstream.kafkaSasl" . }}
- name: kafka-sasl
  secret:
    secretName: {{ include "mailstream.kafkaSaslSecret" . }}
    items:
      - {key: {{ .Values.kafka.sasl.passwordKey }}, path: password}
{{- end }}
{{- if and (include "mailstream.kafkaSsl" .) .Values.kafka.tls.existingSecret }}
{{ include "mailstream.kafkaTlsVolume" . }}
{{- end }}
{{- if include "mailstream.redisAuth" . }}
- name: redis-auth
  secret:
    secretName: {{ include "mailstream.redisSecret" . }}
    items:
      - {key: {{ .Values.redis.passwordKey }}, path: password}
{{- end }}
{{- end -}}
{{- define "mailstream.connectionMounts" -}}
{{- if include "mailstream.kafkaSasl" . }}
- {name: kafka-sasl, mountPath: /etc/mailstream/kafka-sasl, readOnly: true}
{{- end }}
{{- if and (include "mailstream.kafkaSsl" .) .Values.kafka.tls.existingSecret }}
- {name: kafka-tls, mountPath: /etc/mailstream/kafka-tls, readOnly: true}
{{- end }}
{{- if include "mailstream.redisAuth" . }}
- {name: redis-auth, mountPath: /etc/mailstream/redis, readOnly: true}
{{- end }}
{{- end -}}

{{/* topologySpreadConstraints of a component: (dict "ctx" $ "component" "frontend" "spread" .Values.frontend.topologySpread). */}}
{{- define "mailstream.topologySpread" -}}
{{- if .spread.enabled }}
topologySpreadConstraints:
  - maxSkew: {{ .spread.maxSkew }}
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: {{ .spread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "mailstream.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 8 }}
  - maxSkew: {{ .spread.maxSkew }}
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "mailstream.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 8 }}
{{- end }}
{{- end -}}

{{/* KEDA owns the worker's scaling: asked for, and its CRDs exist. */}}
{{- define "mailstream.kedaOn" -}}
{{- if and .Values.worker.keda.enabled (.Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject") }}true{{ end -}}
{{- end -}}

{{/* The Kafka CA / client certificate volume (an existing Secret). */}}
{{- define "mailstream.kafkaTlsVolume" -}}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    items:
      {{- with .Values.kafka.tls }}
      {{- if .caKey }}
      - {key: {{ .caKey }}, path: ca.crt}
      {{- end }}
      {{- if .certKey }}
      - {key: {{ .certKey }}, path: tls.crt}
      {{- end }}
      {{- if .keyKey }}
      - {key: {{ .keyKey }}, path: tls.key}
      {{- end }}
      {{- if .keyPasswordKey }}
      - {key: {{ .keyPasswordKey }}, path: key.password}
      {{- end }}
      {{- end }}
{{- end -}}

{{/* NetworkPolicy egress every pod needs: DNS, Kafka, Redis. */}}
{{- define "mailstream.commonEgress" -}}
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
- ports:
    {{- range .Values.networkPolicy.kafkaPorts }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
  {{- with .Values.networkPolicy.kafkaTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
- ports:
    - {port: {{ .Values.redis.port }}, protocol: TCP}
  {{- with .Values.networkPolicy.redisTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- define "mailstream.metricsIngress" -}}
- from:
    - namespaceSelector:
        matchLabels:
          {{- toYaml .Values.networkPolicy.metricsNamespaceSelector | nindent 10 }}
  ports:
    - {port: metrics, protocol: TCP}
{{- end }}
