{{/*
Names, labels and the checks that make a bad install fail at `helm install` time with a clear message.
*/}}

{{- define "taskq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "taskq.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "taskq.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "taskq.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object of the release carries. */}}
{{- define "taskq.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: taskq
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector of the operator pod; the local harness and `kubectl` find the operator by this name. */}}
{{- define "taskq.operator.selectorLabels" -}}
app.kubernetes.io/name: taskq-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "taskq.operator.fullname" -}}
{{- printf "%s-operator" (include "taskq.fullname" .) -}}
{{- end -}}

{{- define "taskq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "taskq.operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false (name an existing ServiceAccount)" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "taskq.image" -}}
{{- $repository := required "image.repository is required (the image that holds taskq-operator and taskq-worker)" .Values.image.repository -}}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "taskq.rabbitmq.fullname" -}}
{{- printf "%s-rabbitmq" (include "taskq.fullname" .) -}}
{{- end -}}

{{- define "taskq.mongodb.fullname" -}}
{{- printf "%s-mongodb" (include "taskq.fullname" .) -}}
{{- end -}}

{{/* Secret holding the bundled services' own credentials (not the connection Secret). */}}
{{- define "taskq.bundled.secretName" -}}
{{- printf "%s-bundled-credentials" (include "taskq.fullname" .) -}}
{{- end -}}

{{- define "taskq.rabbitmq.password" -}}
{{- required "rabbitmq.password is required when rabbitmq.enabled is true (URL-safe characters: letters, digits, . _ ~ -)" .Values.rabbitmq.password -}}
{{- end -}}

{{- define "taskq.mongodb.password" -}}
{{- required "mongodb.password is required when mongodb.enabled is true (URL-safe characters: letters, digits, . _ ~ -)" .Values.mongodb.password -}}
{{- end -}}

{{/* Whether the chart makes the connection Secret: asked for, or implied by a bundled service. */}}
{{- define "taskq.connection.create" -}}
{{- if or .Values.connection.create .Values.rabbitmq.enabled .Values.mongodb.enabled -}}true{{- end -}}
{{- end -}}

{{- define "taskq.connection.amqpUrl" -}}
{{- if .Values.rabbitmq.enabled -}}
{{- printf "amqp://%s:%s@%s.%s.svc:5672/%%2F" .Values.rabbitmq.username (include "taskq.rabbitmq.password" .) (include "taskq.rabbitmq.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- required "connection.amqpUrl is required when the chart creates the connection Secret without the bundled RabbitMQ (or set rabbitmq.enabled=true, or connection.create=false and make the Secret yourself)" .Values.connection.amqpUrl -}}
{{- end -}}
{{- end -}}

{{- define "taskq.connection.managementUrl" -}}
{{- if .Values.rabbitmq.enabled -}}
{{- printf "http://%s:%s@%s.%s.svc:15672" .Values.rabbitmq.username (include "taskq.rabbitmq.password" .) (include "taskq.rabbitmq.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.connection.managementUrl -}}
{{- end -}}
{{- end -}}

{{- define "taskq.connection.mongodbUri" -}}
{{- if .Values.mongodb.enabled -}}
{{- printf "mongodb://%s:%s@%s.%s.svc:27017/?authSource=admin" .Values.mongodb.username (include "taskq.mongodb.password" .) (include "taskq.mongodb.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- required "connection.mongodbUri is required when the chart creates the connection Secret without the bundled MongoDB (or set mongodb.enabled=true, or connection.create=false and make the Secret yourself)" .Values.connection.mongodbUri -}}
{{- end -}}
{{- end -}}

{{/* Security context shared by the chart's containers: non-root, no privilege escalation, no capabilities. */}}
{{- define "taskq.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/*
The namespaces the operator watches when it is namespaced (rbac.clusterWide false): the release
namespace, then operator.watchNamespaces, each once, as a JSON list (`include ... | fromJsonArray`).
Used by rbac.yaml, operator-deployment.yaml (--namespace flags) and peering.yaml.
*/}}
{{- define "taskq.watchNamespaces" -}}
{{- if and .Values.rbac.clusterWide .Values.operator.watchNamespaces -}}
{{- fail "operator.watchNamespaces lists namespaces, but rbac.clusterWide=true watches all of them: set only one" -}}
{{- end -}}
{{- prepend .Values.operator.watchNamespaces .Release.Namespace | uniq | toJson -}}
{{- end -}}
