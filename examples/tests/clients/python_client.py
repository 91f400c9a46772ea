"""Drives a Capstan API server with the official Kubernetes Python client.

Usage: python_client.py KUBECONFIG NAMESPACE
Exits non-zero (with the failing step) on any deviation from what the client expects.
"""
import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def main() -> None:
    kubeconfig, namespace = sys.argv[1], sys.argv[2]
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))

    # Watch from the start (no resourceVersion): a synthetic ADDED, then live events.
    seen = []

    def watcher() -> None:
        w = watch.Watch()
        for event in w.stream(core.list_namespaced_pod, namespace=namespace, timeout_seconds=20):
            seen.append((event["type"], event["object"].metadata.name))
            if event["type"] == "DELETED":
                w.stop()

    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="py-pod", labels={"app": "py"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="main", image="busybox:1.36")]),
    )
    created = core.create_namespaced_pod(namespace, pod)
    assert created.metadata.uid, "created pod has a uid"
    assert created.spec.containers[0].image_pull_policy == "IfNotPresent", created.spec.containers[0]
    thread = threading.Thread(target=watcher)
    thread.start()
    time.sleep(1)

    pods = core.list_namespaced_pod(namespace, label_selector="app=py")
    assert [p.metadata.name for p in pods.items] == ["py-pod"], pods.items
    assert pods.metadata.resource_version, "list has a resourceVersion"

    # A dict patch (the client sends it as a strategic merge patch), a merge patch, and a JSON
    # patch (a list).
    merge = "application/merge-patch+json"
    patched = core.patch_namespaced_pod("py-pod", namespace, {"metadata": {"labels": {"stage": "zero"}}})
    assert patched.metadata.labels == {"app": "py", "stage": "zero"}, patched.metadata.labels
    patched = core.patch_namespaced_pod("py-pod", namespace, {"metadata": {"labels": {"stage": "one"}}}, _content_type=merge)
    assert patched.metadata.labels["stage"] == "one", patched.metadata.labels
    patched = core.patch_namespaced_pod(
        "py-pod", namespace, [{"op": "add", "path": "/metadata/annotations", "value": {"note": "two"}}]
    )
    assert patched.metadata.annotations["note"] == "two", patched.metadata.annotations

    # Deployments and their scale subresource.
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="py-deploy"),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels={"app": "pyd"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "pyd"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox:1.36")]),
            ),
        ),
    )
    apps.create_namespaced_deployment(namespace, deployment)
    scale = apps.patch_namespaced_deployment_scale("py-deploy", namespace, {"spec": {"replicas": 2}})
    assert scale.spec.replicas == 2, scale
    scale = apps.patch_namespaced_deployment_scale("py-deploy", namespace, {"spec": {"replicas": 3}}, _content_type=merge)
    assert scale.spec.replicas == 3, scale
    scale = apps.patch_namespaced_deployment_scale("py-deploy", namespace, [{"op": "replace", "path": "/spec/replicas", "value": 3}])
    assert scale.spec.replicas == 3, scale
    assert apps.read_namespaced_deployment("py-deploy", namespace).spec.replicas == 3

    # Reading something missing is a 404 ApiException.
    try:
        core.read_namespaced_pod("missing", namespace)
        raise AssertionError("reading a missing pod must fail")
    except ApiException as err:
        assert err.status == 404, err.status

    # Creating an invalid pod is a 422 with the field in the body.
    try:
        core.create_namespaced_pod(namespace, {"metadata": {"name": "bad"}, "spec": {"containers": [{"name": "x"}]}})
        raise AssertionError("an invalid pod must be refused")
    except ApiException as err:
        assert err.status == 422 and "spec.containers[0].image" in err.body, (err.status, err.body)

    deleted = core.delete_namespaced_pod("py-pod", namespace)
    assert deleted.metadata.name == "py-pod"
    thread.join(timeout=20)
    assert ("ADDED", "py-pod") in seen and ("DELETED", "py-pod") in seen, seen
    modified = [e for e in seen if e[0] == "MODIFIED"]
    assert len(modified) >= 2, seen
    print("python client: all steps passed")


if __name__ == "__main__":
    main()
