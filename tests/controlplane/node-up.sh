#!/usr/bin/env bash
# Adds a real node to a control plane that up.sh is starting with WEIR_CONTROLPLANE_NODE=real
# (up.sh calls this; it is not run on its own): containerd (Debian's, runc, its own root,
# state and socket under STATE_DIR/node), the bridge CNI network weir0 (10.244.0.0/24,
# the host is 10.244.0.1), kubelet registered as node weir-node, kube-proxy in iptables
# mode, and CoreDNS as a host process behind the kube-dns Service (10.96.0.10). The
# pause and pgbench images, plus localhost/weir:test when WEIR_NODE_WEIR_BIN names a
# directory with weir and weir-operator, are imported into containerd.
# Processes are appended to STATE_DIR/pids (down.sh stops them); node-down.sh removes
# the pods, mounts, network namespaces, bridge and iptables chains.
# Usage: node-up.sh STATE_DIR   (expects the variables and functions of up.sh)
set -euo pipefail

NODE_DIR="${STATE}/node"
NODE_NAME=weir-node
NODE_IP=10.244.0.1
BRIDGE=weir0
POD_SUBNET=10.244.0.0/24
DNS_IP=10.96.0.10
CONTAINERD_SOCK="${NODE_DIR}/containerd.sock"
NODE_BIN="$("${HERE}/build-node.sh")" || cp_die "building kubelet, kube-proxy and coredns failed"

mkdir -p "${NODE_DIR}"/{cni,cni-ipam,containerd,kubelet,kubelet-certs}
weir_images=()
[[ -z "${WEIR_NODE_WEIR_BIN:-}" ]] || weir_images=(--weir "${WEIR_NODE_WEIR_BIN}")
archives="$("${HERE}/node-images.sh" "${weir_images[@]}")" || cp_die "building the node's images failed"
mapfile -t images <<<"${archives}"

# --- containerd ----------------------------------------------------------------------
missing=()
command -v containerd >/dev/null || missing+=(containerd)
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || missing+=(containernetworking-plugins)
command -v iptables >/dev/null || missing+=(iptables)
if ((${#missing[@]})); then
	cp_log "installing ${missing[*]} from Debian's packages"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
		{ apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
		cp_die "could not install ${missing[*]}"
fi
cat >"${NODE_DIR}/containerd.toml" <<-TOML
	version = 2
	root = "${NODE_DIR}/containerd/root"
	state = "${NODE_DIR}/containerd/state"
	[grpc]
	  address = "${CONTAINERD_SOCK}"
	[ttrpc]
	  address = "${CONTAINERD_SOCK}.ttrpc"
	[plugins."io.containerd.grpc.v1.cri"]
	  # No registry is reachable: the pause image is imported below.
	  sandbox_image = "localhost/weir-pause:1"
	  # The kubelet asks for OOM scores below ours, which needs CAP_SYS_RESOURCE.
	  restrict_oom_score_adj = true
	  # Sandboxes' network namespaces under STATE_DIR, not in the machine's /var/run/netns.
	  netns_mounts_under_state_dir = true
	  [plugins."io.containerd.grpc.v1.cri".containerd]
	    default_runtime_name = "runc"
	    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
	      runtime_type = "io.containerd.runc.v2"
	      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
	        BinaryName = "/usr/sbin/runc"
	        SystemdCgroup = false
	  [plugins."io.containerd.grpc.v1.cri".cni]
	    bin_dir = "/usr/lib/cni"
	    conf_dir = "${NODE_DIR}/cni"
TOML
cat >"${NODE_DIR}/cni/10-weir.conflist" <<-JSON
	{"cniVersion": "1.0.0", "name": "weir", "plugins": [{"type": "bridge", "bridge": "${BRIDGE}",
	  "isGateway": true, "ipMasq": false, "hairpinMode": true,
	  "ipam": {"type": "host-local", "dataDir": "${NODE_DIR}/cni-ipam",
	    "ranges": [[{"subnet": "${POD_SUBNET}", "gateway": "${NODE_IP}"}]],
	    "routes": [{"dst": "0.0.0.0/0"}]}}]}
JSON
start containerd containerd --config "${NODE_DIR}/containerd.toml"
ctr() { command ctr --address "${CONTAINERD_SOCK}" --namespace k8s.io "$@"; }
wait_for "containerd" ctr version
for archive in "${images[@]}"; do
	ctr images import "${archive}" >/dev/null || cp_die "importing ${archive} failed"
done
cp_log "imported ${#images[@]} images into containerd"

# --- kubelet -------------------------------------------------------------------------
issue_cert kubelet "/O=system:nodes/CN=system:node:${NODE_NAME}" clientAuth
issue_cert kubelet-serving "/CN=${NODE_NAME}" serverAuth "IP:${NODE_IP},DNS:${NODE_NAME}"
issue_cert kube-proxy "/CN=system:kube-proxy" clientAuth
write_kubeconfig "${CERTS}/kubelet.kubeconfig" kubelet
write_kubeconfig "${CERTS}/kube-proxy.kubeconfig" kube-proxy
read -r KUBELET_PORT PROXY_HEALTH_PORT PROXY_METRICS_PORT COREDNS_HEALTH_PORT <<<"$(free_ports 4)"
cat >"${NODE_DIR}/kubelet.yaml" <<-YAML
	apiVersion: kubelet.config.k8s.io/v1beta1
	kind: KubeletConfiguration
	address: ${NODE_IP}
	port: ${KUBELET_PORT}
	readOnlyPort: 0
	healthzPort: 0
	tlsCertFile: ${CERTS}/kubelet-serving.crt
	tlsPrivateKeyFile: ${CERTS}/kubelet-serving.key
	authentication:
	  anonymous: {enabled: false}
	  webhook: {enabled: false}
	  x509: {clientCAFile: ${CERTS}/ca.crt}
	authorization: {mode: AlwaysAllow}
	containerRuntimeEndpoint: unix://${CONTAINERD_SOCK}
	clusterDNS: [${DNS_IP}]
	clusterDomain: cluster.local
	# cgroups here are v1 with a v2 mount and not delegated: no QoS hierarchy, no systemd.
	cgroupDriver: cgroupfs
	cgroupsPerQOS: false
	enforceNodeAllocatable: []
	failCgroupV1: false
	failSwapOn: false
	protectKernelDefaults: false
	makeIPTablesUtilChains: false
	localStorageCapacityIsolation: false
	# A shared disk: never evict or collect images because of what other builds use.
	evictionHard: {memory.available: "0%", nodefs.available: "0%", imagefs.available: "0%", nodefs.inodesFree: "0%"}
	imageGCHighThresholdPercent: 100
	imageGCLowThresholdPercent: 99
	serializeImagePulls: false
	podPidsLimit: -1
	resolvConf: /etc/resolv.conf
	podLogsDir: ${NODE_DIR}/pod-logs
	nodeStatusReportFrequency: 10s
	# How soon a changed ConfigMap reaches running pods' volumes (default 1m): short, so
	# that tests can give the operator a short --config-settle-seconds.
	syncFrequency: 2s
YAML
start kubelet "${NODE_BIN}/kubelet" \
	--config="${NODE_DIR}/kubelet.yaml" \
	--kubeconfig="${CERTS}/kubelet.kubeconfig" \
	--root-dir="${NODE_DIR}/kubelet" \
	--cert-dir="${NODE_DIR}/kubelet-certs" \
	--hostname-override="${NODE_NAME}" \
	--node-ip="${NODE_IP}" \
	--v=1

# --- kube-proxy ----------------------------------------------------------------------
cat >"${NODE_DIR}/kube-proxy.yaml" <<-YAML
	apiVersion: kubeproxy.config.k8s.io/v1alpha1
	kind: KubeProxyConfiguration
	mode: iptables
	clientConnection: {kubeconfig: ${CERTS}/kube-proxy.kubeconfig}
	hostnameOverride: ${NODE_NAME}
	bindAddress: 127.0.0.1
	healthzBindAddress: 127.0.0.1:${PROXY_HEALTH_PORT}
	metricsBindAddress: 127.0.0.1:${PROXY_METRICS_PORT}
	clusterCIDR: ${POD_SUBNET}
	# Leave the machine's conntrack table size alone (not ours to change).
	conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
	iptables: {localhostNodePorts: false, syncPeriod: 10s, minSyncPeriod: 0s}
	nodePortAddresses: [${NODE_IP}/32]
YAML
start kube-proxy "${NODE_BIN}/kube-proxy" --config="${NODE_DIR}/kube-proxy.yaml" --v=1

# --- CoreDNS: a host process on the node's address, behind the kube-dns Service --------
cat >"${NODE_DIR}/Corefile" <<-COREFILE
	.:53 {
	    bind ${NODE_IP}
	    errors
	    health 127.0.0.1:${COREDNS_HEALTH_PORT}
	    kubernetes cluster.local in-addr.arpa ip6.arpa {
	        kubeconfig ${KUBECONFIG_ADMIN} weir-test
	        pods insecure
	        fallthrough in-addr.arpa ip6.arpa
	    }
	    cache 5
	}
COREFILE
start coredns "${NODE_BIN}/coredns" -conf "${NODE_DIR}/Corefile"
kubectl apply -f - >/dev/null <<-YAML || cp_die "could not create the kube-dns Service"
	apiVersion: v1
	kind: Service
	metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
	spec:
	  clusterIP: ${DNS_IP}
	  ports:
	  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
	  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
	---
	apiVersion: discovery.k8s.io/v1
	kind: EndpointSlice
	metadata:
	  name: kube-dns-host
	  namespace: kube-system
	  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: weir-test}
	addressType: IPv4
	endpoints: [{addresses: ["${NODE_IP}"], conditions: {ready: true}}]
	ports:
	- {name: dns, port: 53, protocol: UDP}
	- {name: dns-tcp, port: 53, protocol: TCP}
YAML

wait_for "node ${NODE_NAME} Ready" kubectl wait --for=condition=Ready --timeout=2s "node/${NODE_NAME}"
wait_for "CoreDNS" curl -fsS "http://127.0.0.1:${COREDNS_HEALTH_PORT}/health"
