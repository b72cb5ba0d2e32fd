{{/* Names. */}}
{{- define "yts.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "yts.fullname" -}}
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

{{/* Labels every object carries. */}}
{{- define "yts.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "yts.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: yurt-edge
{{- end -}}

{{/* Selector of the server pods. */}}
{{- define "yts.serverSelector" -}}
app.kubernetes.io/name: {{ include "yts.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{/* Selector of the agent pods. */}}
{{- define "yts.agentSelector" -}}
app.kubernetes.io/name: {{ include "yts.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "yts.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "yts.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "yts.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Object names shared between templates. */}}
{{- define "yts.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "yts.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}
{{- define "yts.caConfigMapName" -}}{{ include "yts.fullname" . }}-ca{{- end -}}
{{- define "yts.clientSecretName" -}}{{ include "yts.fullname" . }}-apiserver-client{{- end -}}
{{- define "yts.headlessName" -}}{{ include "yts.fullname" . }}-headless{{- end -}}
{{- define "yts.connectName" -}}{{ include "yts.fullname" . }}-connect{{- end -}}
{{- define "yts.metricsName" -}}{{ include "yts.fullname" . }}-metrics{{- end -}}

{{/* The in-cluster name of the agent Service, which agents verify the certificate against by default. */}}
{{- define "yts.agentServerName" -}}
{{- default (printf "%s.%s.svc" (include "yts.fullname" .) .Release.Namespace) .Values.agent.serverName -}}
{{- end -}}

{{/* Where the server reads its certificates (see the volumes in deployment.yaml). */}}
{{- define "yts.agentCAPath" -}}
{{- if .Values.agents.clientCA -}}
/etc/yurt-tunnel/ca/agent-client-ca.crt
{{- else -}}
/var/run/secrets/kubernetes.io/serviceaccount/ca.crt
{{- end -}}
{{- end -}}
{{- define "yts.connectCAPath" -}}
{{- if .Values.connect.clientCA -}}
/etc/yurt-tunnel/ca/connect-client-ca.crt
{{- else -}}
/etc/yurt-tunnel/ca/ca.crt
{{- end -}}
{{- end -}}

{{/* Bad combinations of values fail the render with a message saying what to set. */}}
{{- define "yts.validate" -}}
{{- if and .Values.tls.existingSecret (not .Values.tls.caBundle) -}}
{{- fail "tls.caBundle is required with tls.existingSecret: give the PEM of the CA that signed its certificate (agents and kube-apiserver verify the server with it)" -}}
{{- end -}}
{{- if and .Values.tls.caBundle (not .Values.tls.existingSecret) -}}
{{- fail "tls.caBundle is only used with tls.existingSecret; without it the chart generates the CA" -}}
{{- end -}}
{{- if and .Values.agent.enabled (not .Values.agent.serverAddresses) -}}
{{- fail "agent.serverAddresses is required with agent.enabled: the host:port edge nodes dial (a cloud node's address with the agent NodePort, the LoadBalancer's address, or the headless Service name when edge nodes reach pod IPs)" -}}
{{- end -}}
{{- if not (has .Values.service.agent.type (list "NodePort" "LoadBalancer" "ClusterIP")) -}}
{{- fail (printf "service.agent.type must be NodePort, LoadBalancer or ClusterIP, not %q" .Values.service.agent.type) -}}
{{- end -}}
{{- if and .Values.connect.enabled (not .Values.connect.allowedNames) (not .Values.connect.allowAnyClient) -}}
{{- fail "connect.allowedNames is required with connect.enabled: the CN of kube-apiserver's egress client certificate (or set connect.allowAnyClient to admit any certificate connect.clientCA signed)" -}}
{{- end -}}
{{- if lt (int .Values.server.replicaCount) 0 -}}
{{- fail "server.replicaCount must be 0 (the server runs outside the cluster) or more" -}}
{{- end -}}
{{- end -}}
