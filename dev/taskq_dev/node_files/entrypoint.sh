#!/bin/bash
# PID 1 of a taskq real-node container: baked into the node image by taskq_dev.nodeimage, started
# by taskq_dev.realnodes. It starts containerd, imports the images in /images (no registry), writes
# a bridge CNI config for this node's pod subnet, routes the `kubernetes` Service address to the
# harness API server, then runs the kubelet until either process exits or the container is stopped.
#
# Environment (set by taskq_dev.realnodes): TASKQ_NODE_NAME, TASKQ_POD_CIDR, TASKQ_API_HOST,
# TASKQ_API_PORT, TASKQ_SERVICE_IP, TASKQ_NODE_LABELS.
set -euo pipefail
logs=/var/log/taskq
mkdir -p "$logs" /etc/cni/net.d /run/containerd /var/lib/containerd /var/lib/kubelet
echo "$(date -u +%FT%TZ) node ${TASKQ_NODE_NAME} starting" >>"$logs/entrypoint.log"
exec >>"$logs/entrypoint.log" 2>&1

# a node identity of its own (the kubelet reports it; debootstrap's minbase leaves none)
[ -s /etc/machine-id ] || tr -d - </proc/sys/kernel/random/uuid >/etc/machine-id

# kubelet mounts (projected volumes, emptyDirs) must propagate into the containers containerd starts.
mount --make-rshared /

# The container is not --privileged (this machine's capability bounding set lacks CAP_SYS_RESOURCE,
# which --privileged asks for), so Docker mounted the node's own cgroups (a private cgroup
# namespace) read-only: containerd and the kubelet manage cgroups below them.
while read -r _ target fstype _; do
  [ "$fstype" = cgroup ] || [ "$fstype" = cgroup2 ] || continue
  mount -o remount,bind,rw "$target"
done </proc/mounts

# /proc/sys is writable for the namespaced net.* keys CNI sets; the host-wide kernel/vm/fs keys stay
# read-only. The kubelet insists on a few of those values (it would write them to the host), so it is
# shown them in files bind-mounted over the read-only keys.
for folder in kernel vm fs; do
  mount --bind "/proc/sys/$folder" "/proc/sys/$folder"
  mount -o remount,bind,ro "/proc/sys/$folder"
done
mkdir -p /run/taskq-sysctl
for setting in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
               kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
  key=${setting%%=*}
  shown=/run/taskq-sysctl/${key//\//_}
  echo "${setting#*=}" >"$shown"
  mount --bind "$shown" "/proc/sys/$key"
done

containerd --config /etc/containerd/config.toml >>"$logs/containerd.log" 2>&1 &
containerd_pid=$!
for _ in $(seq 1 200); do
  ctr version >/dev/null 2>&1 && break
  sleep 0.1
done
ctr version >/dev/null

for archive in /images/*.tar; do
  [ -e "$archive" ] || continue
  ctr --namespace=k8s.io images import --all-platforms "$archive"
done

cat >/etc/cni/net.d/10-taskq-bridge.conflist <<CNI
{
  "cniVersion": "1.0.0",
  "name": "taskq-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "${TASKQ_POD_CIDR}"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    }
  ]
}
CNI
# No kube-proxy: the one Service pods need (`kubernetes`, for in-cluster API clients) is a DNAT rule.
for chain in PREROUTING OUTPUT; do
  iptables -t nat -A "$chain" -d "${TASKQ_SERVICE_IP}/32" -p tcp --dport 443 \
    -j DNAT --to-destination "${TASKQ_API_HOST}:${TASKQ_API_PORT}"
done

node_ip=$(ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
kubelet --config=/etc/kubernetes/kubelet.yaml --kubeconfig=/etc/kubernetes/kubelet.kubeconfig \
  --hostname-override="${TASKQ_NODE_NAME}" --node-ip="${node_ip}" --node-labels="${TASKQ_NODE_LABELS}" \
  --v=1 >>"$logs/kubelet.log" 2>&1 &
kubelet_pid=$!

stop() {
  kill -TERM "$kubelet_pid" 2>/dev/null || true
  wait "$kubelet_pid" 2>/dev/null || true
  kill -TERM "$containerd_pid" 2>/dev/null || true
  wait "$containerd_pid" 2>/dev/null || true
  exit 0
}
trap stop TERM INT
set +e
wait -n "$kubelet_pid" "$containerd_pid"
status=$?
echo "$(date -u +%FT%TZ) a node process exited with status $status"
stop
