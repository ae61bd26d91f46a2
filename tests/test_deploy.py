"""The Kubernetes manifests in deploy/kubernetes/ agree with the binaries they run and with each other.

No cluster runs here: the manifests are parsed (PyYAML), every container's
command is parsed by the flag definitions of the binary it names (the
console scripts of pyproject.toml) and turned into the config that binary
would run, and the names, ports, worker lists and NetworkPolicies are checked
against each other. Kubernetes' own part (`$(VAR)` expansion in env values
and args, the downward API, a StatefulSet's and an Indexed Job's pod names) is
done here the way Kubernetes documents it.
"""

import json
import os
import re
import tomllib

import pytest
import yaml
from absl import flags

from experiments import common, flagging
from experiments.data_service import ServiceConfig
from supcon_tf import distribute

from helpers import ROOT  # noqa: E402
KUBERNETES = os.path.join(ROOT, "deploy", "kubernetes")
MANIFESTS = sorted(name for name in os.listdir(KUBERNETES) if name.endswith(".yaml"))


def _documents(name):
    with open(os.path.join(KUBERNETES, name)) as f:
        return [document for document in yaml.safe_load_all(f) if document is not None]


def _objects():
    """`{(kind, name): object}` over every manifest."""
    objects = {}
    for name in MANIFESTS:
        for document in _documents(name):
            key = (document["kind"], document["metadata"]["name"])
            assert key not in objects, f"{key} defined twice"
            objects[key] = document
    return objects


def _console_scripts():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def _pod_templates(objects):
    """`{(kind, name): pod template}` of the workloads."""
    return {key: o["spec"]["template"] for key, o in objects.items() if key[0] in ("Job", "Deployment", "StatefulSet")}


def _containers(template):
    return template["spec"]["containers"]


def _expand(text, variables):
    """Kubernetes' `$(NAME)` expansion of env values and args (a name it does not know stays as written)."""
    return re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), text)


def _environment(container, downward):
    """The container's env as the pod sees it: values expanded in order, downward-API fields from `downward`."""
    variables = {}
    for entry in container.get("env", []):
        if "value" in entry:
            variables[entry["name"]] = _expand(entry["value"], variables)
        else:
            variables[entry["name"]] = downward[entry["valueFrom"]["fieldRef"]["fieldPath"]]
    return variables


def _args(container, variables):
    return [_expand(arg, variables) for arg in container.get("args", [])]


def _pretrain_config(args):
    """The RunConfig `supcon-pretrain args` would train: its own flags (absl's parser) and `config_from_flags`."""
    flagging.FLAGS.unparse_flags()
    try:
        flagging.FLAGS(["supcon-pretrain", *args])
        return common.config_from_flags()
    finally:
        flagging.FLAGS.unparse_flags()


def _service_options(args):
    """The settings `supcon-data-service args` would serve with (its `ServiceConfig` flags, checked)."""
    flag_values = flags.FlagValues()
    flagging.define(ServiceConfig, flag_values=flag_values)
    flag_values(["supcon-data-service", *args])
    return ServiceConfig(**flagging.values(ServiceConfig, flag_values=flag_values)).options()


PARSERS = {"experiments.pretrain:entry": _pretrain_config, "experiments.data_service:entry": _service_options}


def _run(container, variables):
    """What the container's command would run with: its binary's config/options."""
    (script,) = container["command"]
    return PARSERS[_console_scripts()[script]](_args(container, variables))


def _selects(selector, labels):
    return all(labels.get(key) == value for key, value in selector.items())


def _only(objects, kind, component):
    (key,) = [k for k, o in objects.items() if k[0] == kind and o["metadata"]["labels"].get(
        "app.kubernetes.io/component") == component]
    return objects[key]


def _policy_for(objects, labels):
    """The one NetworkPolicy that selects pods with `labels`."""
    (policy,) = [o for (kind, _), o in objects.items()
                 if kind == "NetworkPolicy" and _selects(o["spec"]["podSelector"]["matchLabels"], labels)]
    return policy


def _admitted(policy, templates):
    """`({workload names whose pods the policy admits}, [ports])` of a one-rule ingress policy."""
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    admitted = {key[1] for key, template in templates.items() for source in rule["from"]
                if _selects(source["podSelector"]["matchLabels"], template["metadata"]["labels"])}
    assert all(set(source) == {"podSelector"} for source in rule["from"])  # no namespace or IP block opens it wider
    return admitted, [(port["protocol"], port["port"]) for port in rule["ports"]]


def test_manifests_are_found():
    assert MANIFESTS == ["data-service.yaml", "multiworker-training.yaml", "storage.yaml"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_container_runs_a_binary_of_the_project_with_its_flags(name):
    scripts = _console_scripts()
    for document in _documents(name):
        assert {"apiVersion", "kind", "metadata"} <= set(document) and document["metadata"]["name"]
        if document["kind"] not in ("Job", "Deployment", "StatefulSet"):
            continue
        for container in _containers(document["spec"]["template"]):
            (script,) = container["command"]
            assert scripts[script] in PARSERS, script
            for arg in container["args"]:  # flags only: nothing for a shell to split
                assert re.fullmatch(r"--\w+(=\S+)?", arg), arg
            downward = {"metadata.name": f"{document['metadata']['name']}-0",
                        "metadata.annotations['batch.kubernetes.io/job-completion-index']": "0"}
            assert _run(container, _environment(container, downward))  # its flags parse, its config validates


def test_multiworker_job_gives_every_pod_the_tf_config_of_one_cluster(monkeypatch):
    objects = _objects()
    job = objects[("Job", "supcon-train")]
    spec, template = job["spec"], job["spec"]["template"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    workers = spec["completions"]
    service = objects[("Service", template["spec"]["subdomain"])]
    assert service["spec"]["clusterIP"] == "None"
    assert _selects(service["spec"]["selector"], template["metadata"]["labels"])
    (container,) = _containers(template)
    (container_port,) = [p["containerPort"] for p in container["ports"]]
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == service_port["targetPort"] == container_port

    # An Indexed Job's pod i is named <job>-<i>; with the subdomain, its DNS name is <job>-<i>.<service>.
    hosts = [f"{job['metadata']['name']}-{i}.{service['metadata']['name']}:{container_port}" for i in range(workers)]
    for index in range(workers):
        annotation = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        variables = _environment(container, {annotation: str(index)})
        tf_config = json.loads(variables["TF_CONFIG"])
        assert tf_config == {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
        config = _run(container, variables)
        assert (config.runtime.strategy, config.runtime.cluster) == ("multi_worker", "tf_config")
        monkeypatch.setenv("TF_CONFIG", variables["TF_CONFIG"])  # the library accepts it
        resolver = distribute.resolve_cluster(config.runtime.cluster)
        assert resolver.cluster_spec().as_dict() == {"worker": hosts} and resolver.task_id == index

    # Every worker writes into one shared, writable volume.
    (mount,) = container["volumeMounts"]
    assert config.model_dir.startswith(mount["mountPath"] + "/")
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == mount["name"]]
    claim = objects[("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]

    templates = _pod_templates(objects)
    policy = _policy_for(objects, template["metadata"]["labels"])
    assert _admitted(policy, templates) == ({"supcon-train"}, [("TCP", container_port)])


def test_data_service_workers_dispatcher_and_trainer_agree_and_only_the_trainer_gets_in():
    objects = _objects()
    templates = _pod_templates(objects)
    dispatcher = _only(objects, "Deployment", "data-dispatcher")
    workers = _only(objects, "StatefulSet", "data-worker")
    trainer = _only(objects, "Job", "data-trainer")
    assert dispatcher["spec"]["replicas"] == 1
    assert _selects(dispatcher["spec"]["selector"]["matchLabels"], dispatcher["spec"]["template"]["metadata"]["labels"])
    assert _selects(workers["spec"]["selector"]["matchLabels"], workers["spec"]["template"]["metadata"]["labels"])

    (dispatcher_container,) = _containers(dispatcher["spec"]["template"])
    served = _run(dispatcher_container, {})
    assert served["role"] == "dispatcher"
    dispatcher_port = served["port"]
    (dispatcher_service,) = [o for (kind, _), o in objects.items() if kind == "Service" and _selects(
        o["spec"]["selector"], dispatcher["spec"]["template"]["metadata"]["labels"])]
    assert [(p["port"], p["targetPort"]) for p in dispatcher_service["spec"]["ports"]] == [(dispatcher_port,) * 2]
    assert [p["containerPort"] for p in dispatcher_container["ports"]] == [dispatcher_port]

    # A StatefulSet's pod i is <name>-<i>; its DNS name <name>-<i>.<serviceName> needs a headless Service.
    worker_service = objects[("Service", workers["spec"]["serviceName"])]
    assert worker_service["spec"]["clusterIP"] == "None"
    assert _selects(worker_service["spec"]["selector"], workers["spec"]["template"]["metadata"]["labels"])
    (worker_container,) = _containers(workers["spec"]["template"])
    advertised = []
    for ordinal in range(workers["spec"]["replicas"]):
        variables = _environment(worker_container, {"metadata.name": f"{workers['metadata']['name']}-{ordinal}"})
        options = _run(worker_container, variables)
        assert options["role"] == "worker"
        assert options["dispatcher"] == f"{dispatcher_service['metadata']['name']}:{dispatcher_port}"
        assert options["host"] == f"{workers['metadata']['name']}-{ordinal}.{worker_service['metadata']['name']}"
        assert [(p["port"], p["targetPort"]) for p in worker_service["spec"]["ports"]] == [(options["port"],) * 2]
        assert [p["containerPort"] for p in worker_container["ports"]] == [options["port"]]
        advertised.append(f"{options['host']}:{options['port']}")
    assert served["workers"] == advertised  # the dispatcher shards over exactly these workers
    worker_port = options["port"]

    (trainer_container,) = _containers(trainer["spec"]["template"])
    config = _run(trainer_container, {})
    assert config.runtime.data_service == f"grpc://{dispatcher_service['metadata']['name']}:{dispatcher_port}"
    assert config.runtime.strategy != "multi_worker"

    # Only the trainer reaches the workers; the trainer and the workers (heartbeats) reach the dispatcher.
    name = trainer["metadata"]["name"]
    assert _admitted(_policy_for(objects, workers["spec"]["template"]["metadata"]["labels"]), templates) == (
        {name}, [("TCP", worker_port)])
    assert _admitted(_policy_for(objects, dispatcher["spec"]["template"]["metadata"]["labels"]), templates) == (
        {name, workers["metadata"]["name"]}, [("TCP", dispatcher_port)])


def test_a_flag_the_binary_does_not_have_is_caught():
    """The check above can fail: an unknown flag, and a bad value, are refused by the binaries' own parsers."""
    with pytest.raises(flags.Error, match="no_such_flag"):
        _pretrain_config(["--no_such_flag=1"])
    with pytest.raises(ValueError, match="`cluster` must be one of"):
        _pretrain_config(["--strategy=multi_worker", "--cluster=kubernetes"])
    with pytest.raises(flags.Error, match="worker_port"):
        _service_options(["--role=worker", "--worker_port=5051"])
