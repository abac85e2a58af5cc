"""The fields KubeRay's ray.io/v1 CRDs accept, as small JSON Schemas for the manifests in cluster/.

Read from KubeRay's CRDs (ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs,rayservices}.yaml,
ray-project/kuberay at feeaf72, v1.7 line): each object lists every key its CRD allows (so a misspelt
key fails, as the API server's strict field validation would reject it), the keys the CRD requires,
and the types and enums of the keys atflrec's manifests set. Pod templates are Kubernetes core types
(Container, PodSpec); only their keys and the parts the manifests use are spelled out.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
BOOLEAN: Schema = {"type": "boolean"}
INT32: Schema = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
STRING_MAP: Schema = {"type": "object", "additionalProperties": STRING}
# Kubernetes resource.Quantity: an integer or a string such as "500m", "16Gi" (pattern from the CRD).
QUANTITY: Schema = {"anyOf": [{"type": "integer"}, {
    "type": "string",
    "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
               r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",
}]}
DNS_1123: Schema = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}


def closed(properties: dict[str, Schema], allowed: str, required: tuple[str, ...] = ()) -> Schema:
    """An object whose keys are those in ``allowed`` (space-separated, from the CRD); ``properties``
    types the ones the manifests use."""
    keys = allowed.split()
    assert set(properties) <= set(keys), sorted(set(properties) - set(keys))
    return {
        "type": "object",
        "properties": {key: properties.get(key, {}) for key in keys},
        "additionalProperties": False,
        "required": list(required),
    }


CONTAINER = closed(
    {
        "name": STRING,
        "image": STRING,
        "env": {"type": "array", "items": {"type": "object", "required": ["name"],
                                           "properties": {"name": STRING, "value": STRING}}},
        "ports": {"type": "array", "items": {"type": "object", "required": ["containerPort"],
                                             "properties": {"containerPort": INT32, "name": STRING}}},
        "resources": closed({"limits": {"type": "object", "additionalProperties": QUANTITY},
                             "requests": {"type": "object", "additionalProperties": QUANTITY}},
                            "claims limits requests"),
        "volumeMounts": {"type": "array", "items": {"type": "object", "required": ["mountPath", "name"],
                                                    "properties": {"mountPath": STRING, "name": STRING}}},
    },
    "args command env envFrom image imagePullPolicy lifecycle livenessProbe name ports readinessProbe "
    "resizePolicy resources restartPolicy restartPolicyRules securityContext startupProbe stdin stdinOnce "
    "terminationMessagePath terminationMessagePolicy tty volumeDevices volumeMounts workingDir",
    required=("name", "image"),  # the CRD requires name; Kubernetes refuses a pod container without image
)

POD_SPEC = closed(
    {
        "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
        "volumes": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {"name": STRING}}},
        "tolerations": {"type": "array", "items": {"type": "object"}},
    },
    "activeDeadlineSeconds affinity automountServiceAccountToken containers dnsConfig dnsPolicy "
    "enableServiceLinks ephemeralContainers hostAliases hostIPC hostNetwork hostPID hostUsers hostname "
    "hostnameOverride imagePullSecrets initContainers nodeName nodeSelector os overhead preemptionPolicy "
    "priority priorityClassName readinessGates resourceClaims resources restartPolicy runtimeClassName "
    "schedulerName schedulingGates schedulingGroup securityContext serviceAccount serviceAccountName "
    "setHostnameAsFQDN shareProcessNamespace subdomain terminationGracePeriodSeconds tolerations "
    "topologySpreadConstraints volumes",
    required=("containers",),
)

POD_TEMPLATE = closed({"metadata": {"type": "object"}, "spec": POD_SPEC}, "metadata spec", required=("spec",))

HEAD_GROUP = closed(
    {"rayStartParams": STRING_MAP, "template": POD_TEMPLATE, "serviceType": STRING},
    "enableIngress headService ingressOptions labels rayStartParams resources serviceType template",
    required=("template",),
)

WORKER_GROUP = closed(
    {"groupName": STRING, "replicas": INT32, "minReplicas": INT32, "maxReplicas": INT32,
     "idleTimeoutSeconds": INT32, "rayStartParams": STRING_MAP, "template": POD_TEMPLATE},
    "groupName idleTimeoutSeconds labels maxReplicas minReplicas numOfHosts priority rayStartParams "
    "replicas resources scaleStrategy suspend template",
    required=("groupName", "maxReplicas", "minReplicas", "template"),
)

RAY_CLUSTER_SPEC = closed(
    {
        "rayVersion": STRING,
        "enableInTreeAutoscaling": BOOLEAN,
        "autoscalerOptions": closed(
            {"version": {"enum": ["v1", "v2"]}, "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
             "idleTimeoutSeconds": INT32},
            "args command env envFrom idleTimeoutSeconds image imagePullPolicy resources securityContext "
            "upscalingMode version volumeMounts",
        ),
        "authOptions": closed({"mode": {"enum": ["disabled", "token"]}}, "enableK8sTokenAuth mode secretName"),
        "headGroupSpec": HEAD_GROUP,
        "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
    },
    "authOptions autoscalerOptions enableInTreeAutoscaling gcsFaultToleranceOptions headGroupSpec "
    "headServiceAnnotations historyServerOptions managedBy networkPolicy rayVersion suspend tlsOptions "
    "upgradeStrategy workerGroupSpecs",
    required=("headGroupSpec",),
)

RAY_JOB_SPEC = closed(
    {"entrypoint": STRING, "runtimeEnvYAML": STRING, "shutdownAfterJobFinishes": BOOLEAN,
     "ttlSecondsAfterFinished": INT32, "backoffLimit": INT32, "activeDeadlineSeconds": INT32,
     "rayClusterSpec": RAY_CLUSTER_SPEC, "clusterSelector": STRING_MAP},
    "activeDeadlineSeconds backoffLimit clusterSelector deletionStrategy entrypoint entrypointNumCpus "
    "entrypointNumGpus entrypointResources jobId managedBy metadata preRunningDeadlineSeconds "
    "rayClusterSpec runtimeEnvYAML shutdownAfterJobFinishes submissionMode submitterConfig "
    "submitterPodTemplate suspend ttlSecondsAfterFinished",
)

RAY_SERVICE_SPEC = closed(
    {"serveConfigV2": STRING, "rayClusterConfig": RAY_CLUSTER_SPEC},
    "deploymentUnhealthySecondThreshold excludeHeadPodFromServeSvc managedBy rayClusterConfig "
    "rayClusterDeletionDelaySeconds serveConfigV2 serveService serviceUnhealthySecondThreshold suspend "
    "upgradeStrategy",
    required=("rayClusterConfig",),
)


def resource(api_version: str, kind: str, spec: Schema) -> Schema:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": {"type": "object", "required": ["name"],
                         "properties": {"name": DNS_1123, "labels": STRING_MAP}},
            "spec": spec,
        },
    }


PVC_SPEC = {
    "type": "object",
    "required": ["accessModes", "resources"],
    "properties": {
        "accessModes": {"type": "array", "items": {"enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany",
                                                            "ReadWriteOncePod"]}},
        "storageClassName": STRING,
        "resources": {"type": "object", "required": ["requests"],
                      "properties": {"requests": {"type": "object", "required": ["storage"],
                                                  "additionalProperties": QUANTITY}}},
    },
}

LABEL_SELECTOR: Schema = closed({"matchLabels": STRING_MAP}, "matchExpressions matchLabels")
NETWORK_POLICY_PEER: Schema = closed({"podSelector": LABEL_SELECTOR, "namespaceSelector": LABEL_SELECTOR},
                                     "ipBlock namespaceSelector podSelector")
NETWORK_POLICY_PORT: Schema = closed({"protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                                      "port": {"anyOf": [INT32, STRING]}, "endPort": INT32},
                                     "endPort port protocol")
# networking.k8s.io/v1 NetworkPolicySpec (Kubernetes core API).
NETWORK_POLICY_SPEC = closed(
    {"podSelector": LABEL_SELECTOR, "policyTypes": {"type": "array", "items": {"enum": ["Ingress", "Egress"]}},
     "ingress": {"type": "array", "items": closed({"from": {"type": "array", "items": NETWORK_POLICY_PEER},
                                                   "ports": {"type": "array", "items": NETWORK_POLICY_PORT}},
                                                  "from ports")}},
    "egress ingress podSelector policyTypes",
    required=("podSelector",),
)

SCHEMAS: dict[str, Schema] = {
    "RayCluster": resource("ray.io/v1", "RayCluster", RAY_CLUSTER_SPEC),
    "RayJob": resource("ray.io/v1", "RayJob", RAY_JOB_SPEC),
    "RayService": resource("ray.io/v1", "RayService", RAY_SERVICE_SPEC),
    "PersistentVolumeClaim": resource("v1", "PersistentVolumeClaim", PVC_SPEC),
    "NetworkPolicy": resource("networking.k8s.io/v1", "NetworkPolicy", NETWORK_POLICY_SPEC),
}
