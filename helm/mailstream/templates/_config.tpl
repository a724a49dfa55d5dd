{{/* The frontend's settings, {section: {key: value}}: the chart's, then frontend.config. */}}
{{- define "mailstream.frontendConfig" -}}
{{- $p := .Values.frontend.containerPorts -}}
{{- $smtp := dict "accepted_domains" .Values.frontend.acceptedDomains "drain_timeout" .Values.frontend.drainSeconds -}}
{{- if .Values.frontend.trustedNetworks }}{{ $_ := set $smtp "trusted_networks" .Values.frontend.trustedNetworks }}{{ end -}}
{{- if .Values.tls.enabled -}}
{{- $_ := set $smtp "tls_cert" "/etc/mailstream/tls/tls.crt" -}}
{{- $_ := set $smtp "tls_key" "/etc/mailstream/tls/tls.key" -}}
{{- end -}}
{{- if .Values.auth.enabled }}{{ $_ := set $smtp "passwd_file" "/etc/mailstream/auth/passwd" }}{{ end -}}
{{- if .Values.proxyProtocol.enabled }}{{ $_ := set $smtp "proxy_trusted_networks" .Values.proxyProtocol.trustedCIDRs }}{{ end -}}
{{- $cfg := dict
      "node" (dict "hostname" .Values.frontend.hostname "metrics" (printf "0.0.0.0:%v" $p.metrics) "threads" .Values.frontend.threads)
      "smtp" $smtp
      "listener.mx" (dict "listen" (printf "0.0.0.0:%v" $p.smtp) "role" "mx") -}}
{{- if .Values.tls.enabled -}}
{{- $_ := set $cfg "listener.submission" (dict "listen" (printf "0.0.0.0:%v" $p.submission) "role" "submission") -}}
{{- $_ := set $cfg "listener.submissions" (dict "listen" (printf "0.0.0.0:%v" $p.submissions) "role" "submissions") -}}
{{- end -}}
{{- if .Values.proxyProtocol.enabled -}}
{{- $_ := set $cfg "listener.mx-proxy" (dict "listen" (printf "0.0.0.0:%v" $p.smtpProxy) "role" "mx" "proxy" true) -}}
{{- if .Values.tls.enabled -}}
{{- $_ := set $cfg "listener.submission-proxy" (dict "listen" (printf "0.0.0.0:%v" $p.submissionProxy) "role" "submission" "proxy" true) -}}
{{- $_ := set $cfg "listener.submissions-proxy" (dict "listen" (printf "0.0.0.0:%v" $p.submissionsProxy) "role" "submissions" "proxy" true) -}}
{{- end -}}
{{- end -}}
{{- $conn := include "mailstream.connectionConfig" . | fromYaml -}}
{{- $_ := set $conn.kafka "topic" .Values.kafka.topic -}}
{{- $cfg = mustMergeOverwrite $cfg $conn (deepCopy .Values.frontend.config) -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* The worker's settings: the chart's, then worker.config. */}}
{{- define "mailstream.workerConfig" -}}
{{- $cfg := dict
      "node" (dict "hostname" .Values.worker.hostname "metrics" (printf "0.0.0.0:%v" .Values.worker.metricsPort))
      "delivery" (dict "drain_timeout_ms" (mul .Values.worker.drainSeconds 1000)) -}}
{{- range .Values.dkim.keys -}}
{{- $_ := set $cfg (printf "dkim.%s" .name) (dict "domain" .domain "selector" .selector "key" (printf "/etc/mailstream/dkim/%s/%s" .name (default "key" .secretKey))) -}}
{{- end -}}
{{- $conn := include "mailstream.connectionConfig" . | fromYaml -}}
{{- $_ := set $conn.kafka "topic" .Values.kafka.topic -}}
{{- $_ := set $conn.kafka "events_topic" .Values.kafka.eventsTopic -}}
{{- $_ := set $conn.kafka "group" .Values.kafka.group -}}
{{- $cfg = mustMergeOverwrite $cfg $conn (deepCopy .Values.worker.config) -}}
{{- toYaml $cfg -}}
{{- end -}}
