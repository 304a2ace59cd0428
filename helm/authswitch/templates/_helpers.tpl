{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "authswitch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name: "<release>-authswitch", or the release name when it contains it. */}}
{{- define "authswitch.fullname" -}}
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

{{- define "authswitch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "authswitch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "authswitch.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "authswitch.secretName" -}}
{{- default (include "authswitch.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "authswitch.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Labels ------------------------------------------------------------------------------
Selector labels carry a component (server, migrate, report) so that the Service, the PDB and
the HPA only ever see the server's pods. Call with (dict "ctx" $ "component" "server"). */}}

{{- define "authswitch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "authswitch.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "authswitch.labels" -}}
helm.sh/chart: {{ include "authswitch.chart" .ctx }}
{{ include "authswitch.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: authswitch
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end -}}

{{/* Settings ----------------------------------------------------------------------------
A values key in camelCase is the Settings field in snake_case: groupCommitBatchMax ->
AUTHSWITCH_GROUP_COMMIT_BATCH_MAX. */}}

{{- define "authswitch.envName" -}}
{{- printf "AUTHSWITCH_%s" (snakecase .) | upper -}}
{{- end -}}

{{/* A value as the application parses it. Helm reads every number in values as a float64,
which would print 1000000 as "1e+06"; whole numbers print as integers. */}}
{{- define "authswitch.envValue" -}}
{{- if kindIs "float64" . -}}
{{- if eq . (floor .) -}}{{- int64 . -}}{{- else -}}{{- . -}}{{- end -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/* The shutdown grace the server will use: the configured one or the application's default
(Settings.shutdown_grace_s; a chart test keeps the two equal). */}}
{{- define "authswitch.shutdownGraceS" -}}
{{- if hasKey .Values.config "shutdownGraceS" -}}
{{- .Values.config.shutdownGraceS -}}
{{- else -}}
10
{{- end -}}
{{- end -}}

{{/* The container port of a host:port listen address ("0.0.0.0:50051", "[::]:50051"). */}}
{{- define "authswitch.listenPort" -}}
{{- splitList ":" . | last | int -}}
{{- end -}}

{{/* Secret references: one env entry per secret setting (secrets.keys), each from
secrets.existingSecret or from the Secret its entry names ({secret, key}). With cardKeysAsFiles
the card keys are files instead (authswitch.cardKeyVolume) named by AUTHSWITCH_*_KEY_FILE. */}}
{{- define "authswitch.secretRef" -}}
{{- $name := include "authswitch.secretName" .ctx -}}
{{- $key := .ref -}}
{{- if kindIs "map" .ref -}}
{{- $name = .ref.secret -}}
{{- $key = .ref.key -}}
{{- end -}}
name: {{ $name | quote }}
key: {{ $key | quote }}
{{- end -}}

{{- define "authswitch.secretEnv" -}}
{{- $asFiles := .Values.secrets.cardKeysAsFiles -}}
{{- range $setting, $ref := .Values.secrets.keys }}
{{- if and $asFiles (hasSuffix "KeyHex" $setting) }}
- name: {{ include "authswitch.envName" (trimSuffix "Hex" $setting) }}_FILE
  value: /var/run/secrets/authswitch/{{ snakecase $setting }}
{{- else }}
- name: {{ include "authswitch.envName" $setting }}
  valueFrom:
    secretKeyRef:
      {{- include "authswitch.secretRef" (dict "ctx" $ "ref" $ref) | nindent 6 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The projected volume of the card keys, when cardKeysAsFiles. */}}
{{- define "authswitch.cardKeyVolume" -}}
- name: card-keys
  projected:
    # Readable by the pod's fsGroup (the app's group) only.
    defaultMode: 0440
    sources:
      {{- range $setting, $ref := .Values.secrets.keys }}
      {{- if hasSuffix "KeyHex" $setting }}
      {{- $secret := include "authswitch.secretRef" (dict "ctx" $ "ref" $ref) | fromYaml }}
      - secret:
          name: {{ $secret.name | quote }}
          items:
            - key: {{ $secret.key | quote }}
              path: {{ snakecase $setting }}
      {{- end }}
      {{- end }}
{{- end -}}

{{/* The Prometheus selector of this release's series. */}}
{{- define "authswitch.promSelector" -}}
{{- printf "job=%q,namespace=%q" (default (include "authswitch.fullname" .) .Values.prometheusRule.job) .Release.Namespace -}}
{{- end -}}

{{- define "authswitch.runbook" -}}
{{- printf "%s#%s" .ctx.Values.prometheusRule.runbookBaseUrl .anchor -}}
{{- end -}}

{{/* Egress to Postgres, Redis and DNS (networkPolicy.egress). */}}
{{- define "authswitch.egressRules" -}}
{{- range $name := list "postgres" "redis" "dns" }}
{{- $rule := get $ $name }}
- ports:
    {{- toYaml $rule.ports | nindent 4 }}
  {{- with $rule.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}
