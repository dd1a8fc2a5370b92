{{/*
The chart name, as used in labels.
*/}}
{{- define "weir.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The base name of every object: the release name, prefixed with the chart name unless the
release name already contains it, so that `helm install weir` gives "weir-operator".
*/}}
{{- define "weir.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := include "weir.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The operator's Deployment, Roles and bindings are named after it.
*/}}
{{- define "weir.operatorName" -}}
{{- printf "%s-operator" (include "weir.fullname" .) }}
{{- end }}

{{- define "weir.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "weir.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "weir.leaseName" -}}
{{- default (include "weir.operatorName" .) .Values.leaderElection.name }}
{{- end }}

{{/*
Selector labels: stable for the life of the release (a Deployment selector is immutable).
component=operator keeps them apart from the pooler pods, which are name=weir too.
*/}}
{{- define "weir.selectorLabels" -}}
app.kubernetes.io/name: {{ include "weir.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "weir.labels" -}}
{{ include "weir.selectorLabels" . }}
app.kubernetes.io/part-of: weir
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "weir.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
What the operator does, as RBAC rules: the same list whether granted cluster-wide
(ClusterRole) or in the one watched namespace (Role). Leases are granted separately, in the
release namespace only.
*/}}
{{- define "weir.operatorRules" -}}
# The API it serves: watch ConnectionPools, patch their metadata, report status, and follow
# the scale subresource that kubectl scale and autoscalers write.
- apiGroups: ["weir.dev"]
  resources: ["connectionpools"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["weir.dev"]
  resources: ["connectionpools/status", "connectionpools/scale"]
  verbs: ["get", "patch", "update"]
# Owner references with blockOwnerDeletion need this where the
# OwnerReferencesPermissionEnforcement admission plugin is on.
- apiGroups: ["weir.dev"]
  resources: ["connectionpools/finalizers"]
  verbs: ["update"]
# The objects that run each pool, applied server-side and garbage-collected through owner
# references. Secrets: the credentials a pool names are read, its auth and app Secrets written.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps", "secrets", "serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# The NetworkPolicy a pool's spec.networkPolicy asks for, and the Prometheus Operator
# PodMonitor of spec.monitoring.podMonitor (a rule may name a resource whose CRD is not
# installed; PodMonitors are applied, never watched).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["get", "create", "patch", "delete"]
# Pooler pods and the Service's ready endpoints, for status.readyReplicas, the Ready
# condition, and for counting the pods that hold server connections during a resize.
# Pods are watched for their IPs, where the operator reads each pooler's /status.
# EndpointSlices are watched too: the pool Service's endpoints are the pods' [peers].
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
# Events explaining its decisions (budget changes, infeasible specs).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
The operator's command line: `weir-operator run` and its flags.
*/}}
{{- define "weir.operatorArgs" -}}
- run
- --metrics-address=0.0.0.0:{{ .Values.metrics.port }}
- --log-format={{ .Values.logFormat }}
{{- if .Values.leaderElection.enabled }}
- --leader-elect=true
- --leader-election-namespace={{ .Release.Namespace }}
- --leader-election-name={{ include "weir.leaseName" . }}
{{- else }}
- --leader-elect=false
{{- end }}
{{- with .Values.watchNamespace }}
- --watch-namespace={{ . }}
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Labels of the alert rules and the dashboard: the chart's, with component=monitoring.
*/}}
{{- define "weir.monitoringLabels" -}}
app.kubernetes.io/name: {{ include "weir.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: monitoring
app.kubernetes.io/part-of: weir
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}
