{{/*
Names and switches of the optional taskq-api (api.enabled): used by api-*.yaml and NOTES.txt.
*/}}

{{- define "taskq.api.fullname" -}}
{{- printf "%s-api" (include "taskq.fullname" .) -}}
{{- end -}}

{{/* Selector of the API pods. */}}
{{- define "taskq.api.selectorLabels" -}}
app.kubernetes.io/name: taskq-api
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The Secret holding the token file(s): the user's (api.auth.existingSecret) or the chart's. */}}
{{- define "taskq.api.authSecretName" -}}
{{- default (printf "%s-auth" (include "taskq.api.fullname" .)) .Values.api.auth.existingSecret -}}
{{- end -}}

{{/*
Namespace whose TaskQueues the dashboard lists for its replicas column: api.dashboard.taskQueueNamespace,
else the release namespace; empty (every namespace) only with rbac.clusterWide and no namespace named.
*/}}
{{- define "taskq.api.taskQueueNamespace" -}}
{{- if .Values.api.dashboard.taskQueueNamespace -}}
{{- .Values.api.dashboard.taskQueueNamespace -}}
{{- else if not .Values.rbac.clusterWide -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}
