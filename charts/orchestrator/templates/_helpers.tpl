{{/*
Chart name, overridable. Reason: the `app.kubernetes.io/name` label and the
default object-name prefix must agree, and users rename charts they vendor.
*/}}
{{- define "orchestrator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Object-name prefix: the release name alone when it already contains the chart
name (release "orchestrator" gives "orchestrator-operator", not
"orchestrator-orchestrator-operator"). Reason: readable names. Truncated to 52
so the longest suffix we add ("-operator", "-defaults") keeps names within the
63 characters a label value or a Service name allows.
*/}}
{{- define "orchestrator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of the cluster-scoped objects (ClusterRole, ClusterRoleBinding,
ValidatingAdmissionPolicy). Reason: they share one cluster-wide name space, so
two releases with the same name in different namespaces must not collide (Helm
would refuse the second install on an ownership conflict).
*/}}
{{- define "orchestrator.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "orchestrator.fullname" .) }}
{{- end }}

{{/*
The compiled registry's name, "<release>-registry". Reason: the operator and
the proxies must be given the same name, RBAC lists it (and its shards), and it
is used as a label value, so it must stay within 63 characters (a release name
is at most 53).
*/}}
{{- define "orchestrator.registry" -}}
{{- printf "%s-registry" .Release.Name }}
{{- end }}

{{/*
Every registry ConfigMap name, "<registry>", "<registry>-1" ... "<registry>-31"
(core/contract.py MAX_SHARDS = 32), as a YAML flow list. Reason: RBAC
resourceNames must name each shard the operator may write and the proxies may read.
*/}}
{{- define "orchestrator.registryNames" -}}
{{- $registry := include "orchestrator.registry" . }}
{{- $names := list $registry }}
{{- range $i := untilStep 1 32 1 }}
{{- $names = append $names (printf "%s-%d" $registry $i) }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{/*
Namespaces the operator watches when watch.mode is "namespaces": the listed
ones plus the release namespace, without duplicates, in a stable order, as a
JSON list. Reason: the proxies' report ConfigMaps live in the release namespace
and the operator only sees them through its ConfigMap watch, so that namespace
is always watched; RBAC, peering objects and the --watch-namespace flags are
all generated from this one list so they cannot disagree.
*/}}
{{- define "orchestrator.watchedNamespaces" -}}
{{- $all := append (.Values.watch.namespaces | default list) .Release.Namespace }}
{{- toJson (uniq $all) }}
{{- end }}

{{/*
Common labels. Reason: the recommended app.kubernetes.io labels on every
object let `kubectl get all -l app.kubernetes.io/instance=<release>` find them
and tell which chart version made them.
*/}}
{{- define "orchestrator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "orchestrator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: orchestrator
{{- end }}

{{/*
Selector labels of one component (call with (dict "ctx" $ "component" "proxy")).
Reason: Deployment selectors are immutable, so they hold only labels that never
change across upgrades (no version, no chart label), and the component keeps
the operator's and proxies' Pods apart.
*/}}
{{- define "orchestrator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "orchestrator.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
ServiceAccount names. Reason: with serviceAccount.create=false the user names an
existing account, and the bindings and the admission policy must follow it.
*/}}
{{- define "orchestrator.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "orchestrator.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "orchestrator.proxyServiceAccount" -}}
{{- if .Values.proxy.serviceAccount.create }}
{{- default (printf "%s-proxy" (include "orchestrator.fullname" .)) .Values.proxy.serviceAccount.name }}
{{- else }}
{{- required "proxy.serviceAccount.name is required when proxy.serviceAccount.create is false" .Values.proxy.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference. Reason: a digest pins the exact build and must win over
the tag; an empty tag follows the chart's appVersion so chart and code move together.
*/}}
{{- define "orchestrator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The operator's rules on what it watches (Endpoints, ConfigMaps, Events, status),
shared by the ClusterRole (watch.mode all) and the per-namespace Roles.
Reason: one definition, so the two watch modes grant exactly the same verbs.
*/}}
{{- define "orchestrator.operatorWatchRules" -}}
# Endpoints: watched (kopf on.event) and listed once at startup.
- apiGroups: ["orchestrator.dev"]
  resources: ["endpoints"]
  verbs: ["get", "list", "watch"]
# The operator is the single writer of Endpoint status (merge patch).
- apiGroups: ["orchestrator.dev"]
  resources: ["endpoints/status"]
  verbs: ["patch"]
# Every ConfigMap is watched (sources carry a label the operator checks itself,
# so removing the label is noticed); reads only.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch"]
# Events about Endpoints and source ConfigMaps (the operator's and kopf's own warnings).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
The pod's /tmp volume and mount. Reason: readOnlyRootFilesystem is on, and
Python's tempfile (and libraries that use it) need a writable directory.
*/}}
{{- define "orchestrator.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{/*
The proxy Pod's terminationGracePeriodSeconds: the drain, then the grace for
in-flight calls, plus 5 s for the process to exit. A value that leaves less
than drain + grace fails the render: the kubelet would cut calls off.
*/}}
{{- define "orchestrator.proxyTerminationGrace" -}}
{{- $p := .Values.proxy -}}
{{- $needed := addf $p.drainSeconds $p.graceSeconds | ceil | int -}}
{{- if $p.terminationGracePeriodSeconds -}}
{{- if le (int $p.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "proxy.terminationGracePeriodSeconds (%v) must exceed proxy.drainSeconds + proxy.graceSeconds (%v)" $p.terminationGracePeriodSeconds $needed) -}}
{{- end -}}
{{- int $p.terminationGracePeriodSeconds -}}
{{- else -}}
{{- add $needed 5 -}}
{{- end -}}
{{- end -}}
