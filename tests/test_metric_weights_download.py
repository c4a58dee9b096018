"""Metric weights downloaded from their official sources: a local HTTP server on 127.0.0.1 serves files in the official
formats (torchvision, lpips, DISTS, pytorch-fid) holding seeded random weights, so nothing leaves the machine."""

import hashlib
import http.server
import io
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from rp_diffusers.metrics import DISTS, LPIPS, FIDInceptionV3, MetricWeightsUnavailable
from rp_diffusers.metrics import weights as metric_weights
from rp_diffusers.metrics.testing import seeded_image_pair, seeded_state_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ("lpips_alex", "lpips_vgg", "dists", "fid_inception")


def _file_name(kind: str) -> str:
    return metric_weights.SOURCES[kind][0].rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def seeded():
    """Seeded weights in our layout; the one official vgg16 file holds DISTS's backbone (LPIPS-VGG shares it)."""
    weights = {name: seeded_state_dict(name, seed=3) for name in NAMES}
    backbone = {key: value for key, value in weights["dists"].items() if key.startswith("features.")}
    weights["lpips_vgg"] = {**weights["lpips_vgg"], **backbone}
    return weights


@pytest.fixture(scope="module")
def official(seeded):
    """The official files' bytes, key for key as their authors save them (classifier heads zero and cut short)."""
    inception = dict(seeded["fid_inception"])
    for key in [key for key in inception if key.endswith("running_var")]:
        inception[key.removesuffix("running_var") + "num_batches_tracked"] = torch.tensor(0)
    states = {
        "alexnet": {**seeded["lpips_alex"], "classifier.6.bias": torch.zeros(1000)},
        "vgg16": {**seeded["dists"], "classifier.6.bias": torch.zeros(1000)},
        "lpips_alex_lin": {f"lin{k}.model.1.weight": seeded["lpips_alex"][f"lin{k}.weight"] for k in range(5)},
        "lpips_vgg_lin": {f"lin{k}.model.1.weight": seeded["lpips_vgg"][f"lin{k}.weight"] for k in range(5)},
        "dists_alpha_beta": {"alpha": seeded["dists"]["alpha"], "beta": seeded["dists"]["beta"]},
        "fid_inception": {**inception, "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)},
    }
    for kind in ("alexnet", "vgg16"):  # torchvision's files hold features.* and classifier.*, nothing else
        states[kind] = {k: v for k, v in states[kind].items() if k.startswith(("features.", "classifier."))}
    files = {}
    for kind, state in states.items():
        buffer = io.BytesIO()
        torch.save(state, buffer)
        files[_file_name(kind)] = buffer.getvalue()
    return files


class _Server:
    """Serves ``files`` under ``/mirror/{name}``, counting requests; names in ``truncate`` die halfway through, names
    in ``missing`` are 404."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests, self.truncate, self.missing = files, [], set(), set()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                owner.requests.append(name)
                if name not in owner.files or name in owner.missing:
                    self.send_error(404)
                    return
                body = owner.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # a server dying mid-file: the full Content-Length promised, half the bytes sent, connection closed
                self.wfile.write(body[: len(body) // 2] if name in owner.truncate else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def server(official):
    server = _Server(official)
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def online(monkeypatch, tmp_path, server, official):
    """Downloads allowed, from the local server, into an empty cache; the expected SHA-256 are the served files'."""
    for var in ("HF_HUB_OFFLINE", metric_weights.ENV_OFFLINE, metric_weights.ENV_DIR):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv(metric_weights.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setenv(metric_weights.ENV_MIRROR, server.url)
    sources = {
        kind: (url, hashlib.sha256(official[_file_name(kind)]).hexdigest())
        for kind, (url, _) in metric_weights.SOURCES.items()
    }
    monkeypatch.setattr(metric_weights, "SOURCES", sources)
    server.requests.clear()
    server.truncate.clear()
    server.missing.clear()
    return tmp_path / "cache"


def _build(name: str, **kwargs) -> torch.nn.Module:
    if name.startswith("lpips_"):
        return LPIPS(name.removeprefix("lpips_"), **kwargs)
    return DISTS(**kwargs) if name == "dists" else FIDInceptionV3(**kwargs)


def _files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def test_metric_weights_first_use_downloads_converts_and_matches_the_seeded_networks(online, server, seeded):
    x, y = seeded_image_pair((2, 3, 40, 40), seed=5)
    for name in NAMES:
        downloaded, direct = _build(name), _build(name, state_dict=seeded[name])
        with torch.no_grad():
            got, expected = (downloaded(x), direct(x)) if name == "fid_inception" else (downloaded(x, y), direct(x, y))
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=name)
    assert sorted(server.requests) == sorted(_file_name(kind) for kind in metric_weights.SOURCES)  # vgg16 once
    official = [f"official/{_file_name(kind)}" for kind in metric_weights.SOURCES]
    assert _files(online) == sorted([*metric_weights.WEIGHT_FILES.values(), *official])  # no temporary file left


def test_metric_weights_second_use_makes_no_request_even_offline(online, server, monkeypatch):
    LPIPS("alex")
    assert len(server.requests) == 2
    server.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    LPIPS("alex")
    assert server.requests == []


def test_metric_weights_corrupt_cached_official_file_is_fetched_again(online, server):
    (online / "official").mkdir(parents=True)
    (online / "official" / "alex.pth").write_bytes(b"not the file")
    (online / "official" / "alexnet-owt-7be5be79.pth").write_bytes(server.files["alexnet-owt-7be5be79.pth"])
    LPIPS("alex")
    assert server.requests == ["alex.pth"]


def test_metric_weights_wrong_checksum_raises_and_leaves_no_file(online, server, monkeypatch):
    sources = dict(metric_weights.SOURCES)
    sources["alexnet"] = (sources["alexnet"][0], "7be5be79")  # the real file's prefix, not the served file's
    monkeypatch.setattr(metric_weights, "SOURCES", sources)
    with pytest.raises(MetricWeightsUnavailable) as info:
        LPIPS("alex")
    actual = hashlib.sha256(server.files["alexnet-owt-7be5be79.pth"]).hexdigest()
    message = str(info.value)
    assert f"{server.url}/alexnet-owt-7be5be79.pth" in message and "7be5be79" in message and actual in message
    assert "does not match" in message and "convert" in message
    assert _files(online) == []


def test_metric_weights_server_dying_mid_file_raises_and_leaves_no_partial_file(online, server):
    server.truncate.add("vgg16-397923af.pth")
    with pytest.raises(MetricWeightsUnavailable, match=r"vgg16-397923af\.pth stopped after \d+ of \d+ bytes"):
        DISTS()
    assert _files(online) == []
    server.truncate.clear()  # the next try succeeds from scratch
    DISTS()
    assert _files(online) == ["dists_vgg16.safetensors", "official/vgg16-397923af.pth", "official/weights.pt"]


def test_metric_weights_unreachable_mirror_raises_quickly_with_the_url(online, monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(metric_weights.ENV_MIRROR, f"http://127.0.0.1:{port}/gone")
    start = time.monotonic()
    with pytest.raises(MetricWeightsUnavailable, match=rf"could not download http://127.0.0.1:{port}/gone/pt_incep"):
        FIDInceptionV3()
    assert time.monotonic() - start < 5
    assert _files(online) == []


def test_metric_weights_missing_file_on_the_mirror_raises_with_the_url(online, server):
    server.missing.add("weights.pt")
    with pytest.raises(MetricWeightsUnavailable, match=r"could not download .*/weights\.pt \(HTTPError"):
        DISTS()
    assert _files(online) == ["official/vgg16-397923af.pth"]  # the good download stays for the next try


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "RP_DIFFUSERS_OFFLINE"])
def test_metric_weights_offline_raises_at_once_with_how_to(online, server, monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    start = time.monotonic()
    with pytest.raises(MetricWeightsUnavailable) as info:
        LPIPS("vgg")
    assert time.monotonic() - start < 2
    message = str(info.value)
    assert "vgg16-397923af.pth" in message and "vgg.pth" in message and "downloads are off" in message
    assert "python -m rp_diffusers.metrics.weights FILE... --out DIR" in message
    assert "download and convert by themselves" in message
    assert server.requests == [] and _files(online) == []


def test_metric_weights_cache_folder_follows_its_variable_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(metric_weights.ENV_CACHE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert metric_weights.metric_weights_cache_dir() == tmp_path / "xdg" / "rp_diffusers" / "metric_weights"
    monkeypatch.setenv(metric_weights.ENV_CACHE, str(tmp_path / "mine"))
    assert metric_weights.metric_weights_cache_dir() == tmp_path / "mine"


def test_metric_weights_no_code_points_at_a_hub_repo_that_does_not_exist():
    package = Path(metric_weights.__file__).resolve().parents[1]
    offenders = [str(p) for p in package.rglob("*.py") if "rp-diffusers/metric-weights" in p.read_text()]
    assert offenders == []
    assert not hasattr(metric_weights, "METRICS_REPO_ID")
    assert all(url.startswith("https://") and "huggingface" not in url for url, _ in metric_weights.SOURCES.values())


@pytest.mark.network
@pytest.mark.parametrize("kind", ["lpips_alex_lin", "lpips_vgg_lin", "dists_alpha_beta"])
def test_metric_weights_real_head_files_have_the_pinned_sha256(monkeypatch, tmp_path, kind):
    """The authors' GitHub files are the ones whose SHA-256 were pinned from the PyPI wheels (small files only)."""
    monkeypatch.delenv(metric_weights.ENV_MIRROR, raising=False)
    url, expected = metric_weights.SOURCES[kind]
    metric_weights._download(url, tmp_path / "file", expected)
    assert hashlib.sha256((tmp_path / "file").read_bytes()).hexdigest() == expected
