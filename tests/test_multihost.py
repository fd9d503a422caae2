"""A swarm across hosts: four network namespaces joined by a bridge (``tests/netns.py``), as four machines on a LAN.

Hosts ``a``, ``b`` and ``c`` each run ``python -m backend swarm`` on their own address (port 31337 on each): ``a``
starts a new swarm serving blocks 0:2 of the tiny 4-layer Llama, ``b`` and ``c`` join it by its printed multiaddr,
both serving 2:4 (``c`` is the replica). The app (``python -m backend``) runs on host ``app``, given only ``a``'s
printed address; the tests talk to it from the root namespace over the bridge. One rig per module; the tests run in
order and share its state:

(a) joining by the printed multiaddrs: /readyz sees three servers and every block;
(b) a greedy answer routed through two hosts equals plain transformers;
(c) the 2:4 host of a streaming answer loses its link (``ip link set ... down``): the stream finishes with the same
    text through the replica, or ends with one clear error, within the retry bound, never hangs;
(d) the 2:4 host of a streaming answer is killed (every process on it): the replica finishes it, identical text;
(e) 16 chat sessions run while a host joins and another leaves: zero client errors, identical answers, no leaked
    session.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import REPO, LiveServer, poll_until, write_minimal_registry
from netns import PREFIX as NS_PREFIX
from netns import NetnsRig, _ip, cleanup_stale, namespaces, unavailable_reason
from reliability_helpers import ask, collect, connect, pick_stop

_UNAVAILABLE = unavailable_reason()
pytestmark = [pytest.mark.skipif(_UNAVAILABLE is not None, reason=f"multi-host rig: {_UNAVAILABLE}"),
              pytest.mark.timeout(300)]

PREFIX = "multihost"
PORT = 31337
APP_PORT = 5000
# Client retry settings: a silent or dead server is noticed within seconds, and a step fails within a known bound.
CLIENT = dict(request_timeout=5, max_retries=4, min_backoff=0.2, max_backoff=1, ban_timeout=2, update_period=2)
ERROR_BOUND_S = (CLIENT["max_retries"] + 1) * CLIENT["request_timeout"] + CLIENT["max_retries"] * CLIENT[
    "max_backoff"] + 10
TURN1 = "<|im_start|>user\nTell me a story<|im_end|>\n<|im_start|>assistant\n"
TURN2 = "<|im_start|>user\nGo on<|im_end|>\n<|im_start|>assistant\n"


class SwarmHost:
    """``python -m backend swarm`` on one host of the rig; its output is read on a thread and kept with arrival
    times (the servers' logs included: Petals logs ``rpc_inference.open(blocks=...)`` for every session it serves)."""

    def __init__(self, rig: NetnsRig, host: str, model: Path, blocks: str, join: list[str], log_dir: Path):
        self.host, self.ip, self.blocks = host, rig.hosts[host].ip, blocks
        self.log = log_dir / f"swarm-{host}.log"
        args = [sys.executable, "-m", "backend", "swarm", str(model), "--blocks", blocks, "--host", self.ip,
                "--port", str(PORT), "--dht-prefix", PREFIX]
        if join:
            args += ["--initial-peers", *join]
        self.process = rig.popen(host, args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True, name=f"swarm-{host}").start()

    def _read(self) -> None:
        with open(self.log, "a") as log:
            for line in self.process.stdout:
                self.lines.append((time.monotonic(), line))
                log.write(line)
                log.flush()

    def peers_now(self) -> list[str] | None:
        for _, line in self.lines:
            if line.startswith("INITIAL_PEERS="):
                return line.strip().removeprefix("INITIAL_PEERS=").split()
        if self.process.poll() is not None:
            raise AssertionError(f"swarm on {self.host} exited:\n" + self.tail())
        return None

    def peers(self, timeout: float = 150) -> list[str]:
        """The INITIAL_PEERS= line: printed once every block of this host is announced."""
        return poll_until(self.peers_now, timeout, f"host {self.host} to serve {self.blocks}")

    def last_open(self) -> float:
        """When this host last opened an inference session (0: never)."""
        return max((t for t, line in self.lines if "rpc_inference.open(" in line), default=0.0)

    def tail(self, n: int = 40) -> str:
        return "".join(line for _, line in self.lines[-n:])


def _readyz(url: str) -> dict:
    try:
        return httpx.get(url + "/readyz", timeout=15).json()["models"].get("tiny", {})
    except (httpx.HTTPError, ValueError):
        return {}


def _wait_swarm(server: LiveServer, servers: int | None = None, timeout: float = 60) -> dict:
    """Until the app reads online servers (``servers`` of them, if given) covering every block from the DHT.

    A crashed server stays listed until its DHT record expires (minutes): counts are only exact before a crash."""
    def ok():
        t = _readyz(server.url)
        return t.get("swarm_ok") and servers in (None, t.get("servers")) and t
    return poll_until(ok, timeout, f"{servers or 'all'} servers in /readyz")


@pytest.fixture(scope="module")
def rig():
    with NetnsRig(["a", "b", "c", "app"]) as rig:
        yield rig


@dataclass
class Swarm:
    """The swarm commands running on the rig, by host, and what the tests did to them."""
    log_dir: Path
    hosts: dict[str, SwarmHost] = field(default_factory=dict)
    killed: str | None = None  # the host the kill test crashed (the churn test brings it back)

    def __getitem__(self, name: str) -> SwarmHost:
        return self.hosts[name]

    def __setitem__(self, name: str, host: SwarmHost) -> None:
        self.hosts[name] = host


@pytest.fixture(scope="module")
def hosts(rig, tiny_model, tmp_path_factory):
    swarm = Swarm(tmp_path_factory.mktemp("multihost"))
    try:
        swarm["a"] = SwarmHost(rig, "a", tiny_model, "0:2", [], swarm.log_dir)
        first = swarm["a"].peers()
        for name in "bc":  # both join through a's printed address, at the same time
            swarm[name] = SwarmHost(rig, name, tiny_model, "2:4", first, swarm.log_dir)
        for name in "bc":
            swarm[name].peers()
        yield swarm
    finally:
        for name, host in swarm.hosts.items():
            print(f"--- swarm on {name} (last lines; whole log in {host.log})\n{host.tail(15)}")


@pytest.fixture(scope="module")
def app(rig, hosts, tiny_model):
    log_dir = hosts.log_dir
    registry = log_dir / "models.toml"
    write_minimal_registry(registry, tiny_model, PREFIX, max_session_length=2048)
    ip = rig.hosts["app"].ip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PETALS_CHAT_HOST": ip, "PETALS_CHAT_PORT": str(APP_PORT),
           "PETALS_CHAT_DTYPE": "float32", "PETALS_CHAT_DEVICE": "cpu",
           "PETALS_CHAT_INITIAL_PEERS": " ".join(hosts["a"].peers()),
           "PETALS_CHAT_MODELS": str(registry),
           # the tests are one client address with 16 sessions
           "PETALS_CHAT_MAX_SESSIONS_PER_CLIENT": "64", "PETALS_CHAT_MAX_IDLE_SESSIONS_PER_CLIENT": "64",
           "PETALS_CHAT_MAX_TOKENS_PER_CLIENT": str(64 * 512),
           **{f"PETALS_CHAT_{name.upper()}": str(value) for name, value in CLIENT.items()}}
    log = log_dir / "backend.log"
    process = rig.popen("app", [sys.executable, "-m", "backend"], cwd=REPO, env=env, stdout=open(log, "w"),
                        stderr=subprocess.STDOUT)
    url = f"http://{ip}:{APP_PORT}"

    def healthy():
        if process.poll() is not None:
            raise AssertionError(f"the app exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            return urllib.request.urlopen(url + "/healthz", timeout=2).status == 200
        except OSError:
            return False

    poll_until(healthy, 180, "the app on its host to be healthy")
    server = LiveServer(url=url, ws_url=f"ws://{ip}:{APP_PORT}", process=process, log=log)
    yield server
    rig.stop_host("app")
    print("--- app (last lines)\n" + log.read_text()[-3000:])


def _session_host(hosts: Swarm, since: float) -> SwarmHost:
    """The 2:4 host that opened an inference session last (after ``since``): the one on the session's route."""
    def opened():
        times = {name: hosts[name].last_open() for name in "bc"}
        name = max(times, key=times.get)
        return times[name] > since and hosts[name]
    return poll_until(opened, 10, "a 2:4 host to open the session")


async def _open(server: LiveServer, max_length: int = 512):
    ws = await connect(server.ws_url)
    assert await ask(ws, {"type": "open_inference_session", "model": "tiny", "max_length": max_length}) == {"ok": True}
    return ws


def _long_answer(reference):
    """Turn 1 (4 tokens) and a long greedy turn 2 that ends on a stop token picked at least 50 tokens in."""
    ids1 = reference.encode(TURN1)
    gen1 = reference.greedy_ids(ids1, 4, eos=False)
    gen2 = reference.greedy_ids(ids1 + gen1 + reference.encode(TURN2), 120, eos=False)
    p = pick_stop(reference, gen2, 50)
    return reference.decode(gen1), reference.decode(gen2[p:p + 1]), reference.decode(gen2[:p + 1])


def test_rig_connects_its_hosts_only_cuts_links_and_leaves_nothing_behind():
    listen = ("import socket, sys; s = socket.create_server((sys.argv[1], 7000)); print('up', flush=True)\n"
              "while True: s.accept()[0].close()")
    probe = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()"
    with NetnsRig(["x", "y"]) as small:
        x = small.hosts["x"]
        listener = small.popen("x", [sys.executable, "-c", listen, x.ip], stdout=subprocess.PIPE, text=True)
        assert listener.stdout.readline() == "up\n"

        def reach(ip: str, port: int = 7000) -> tuple[int, str]:
            prober = small.popen("y", [sys.executable, "-c", probe, ip, str(port)], stderr=subprocess.PIPE, text=True)
            return prober.wait(10), prober.stderr.read()

        assert reach(x.ip) == (0, "")  # host to host
        socket.create_connection((x.ip, 7000), timeout=2).close()  # the root namespace is on the bridge too
        code, error = reach("192.0.2.1", 80)  # TEST-NET-1: nothing outside the rig is reachable
        assert code and "Network is unreachable" in error, error
        small.cut("x")
        code, error = reach(x.ip)
        assert code and "timed out" in error, error
        small.restore("x")
        assert reach(x.ip) == (0, "")
        names = small._names()
    assert listener.poll() is not None  # teardown ended it
    assert not set(names) & set(namespaces())
    assert small.root_link not in _ip("-o", "link", "show")


def test_hosts_join_by_printed_multiaddr_and_the_app_sees_every_block(rig, hosts, app):
    for name in "abc":
        peers = hosts[name].peers()
        assert peers and all(p.startswith(f"/ip4/{rig.hosts[name].ip}/tcp/{PORT}/p2p/12D3Koo") for p in peers), peers
    assert "joined the swarm at " + " ".join(hosts["a"].peers()) in hosts["b"].tail(200)
    tiny = _wait_swarm(app, 3)
    assert tiny["state"] == "ready" and tiny["blocks_served"] == tiny["blocks_total"] == 4, tiny
    health = httpx.get(app.url + "/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_greedy_answer_routed_across_hosts_equals_transformers(hosts, app, reference):
    prompt = "<|im_start|>user\nacross three hosts<|im_end|>\n"
    since = time.monotonic()
    answer = httpx.post(app.url + "/api/v1/generate", timeout=60,
                        json={"model": "tiny", "inputs": prompt, "max_new_tokens": 12, "do_sample": 0})
    assert answer.status_code == 200 and answer.json()["ok"], answer.text
    assert answer.json()["outputs"] == reference.decode(reference.greedy_ids(reference.encode(prompt), 12))
    # it went through two hosts: a (0:2) and one of b, c (2:4)
    poll_until(lambda: hosts["a"].last_open() > since, 10, "host a to serve the session")
    _session_host(hosts, since)


def _interrupt_second_turn(app, hosts, reference, act) -> tuple[list[dict], float, str, str]:
    """Turn 1 of the long answer, then turn 2, during which ``act(host)`` runs once, after the 5th reply, on the
    host serving the session's second span. Turn 2's replies, its duration, that host and the expected text."""
    gen1, stop_text, expected = _long_answer(reference)
    victims: list[str] = []

    async def scenario():
        async with await _open(app) as ws:
            since = time.monotonic()
            first = await collect(ws, {"type": "generate", "inputs": TURN1, "max_new_tokens": 4})
            assert first[0]["outputs"] == gen1
            victim = _session_host(hosts, since).host

            def on_reply(reply: dict, n: int) -> None:
                if n == 5 and not victims:  # tokens are flowing through the victim
                    victims.append(victim)
                    act(victim)

            started = time.monotonic()
            second = await collect(ws, {"type": "generate", "inputs": TURN2, "max_new_tokens": 1,
                                        "stop_sequence": stop_text}, timeout=ERROR_BOUND_S, on_reply=on_reply)
            return second, time.monotonic() - started

    second, took = asyncio.run(scenario())
    assert victims, "turn 2 ended before its 5th reply"
    return second, took, victims[0], expected


def test_cut_link_mid_answer_gives_the_answer_or_one_clear_error_in_time(rig, hosts, app, reference):
    cut: list[str] = []
    try:
        second, took, _, expected = _interrupt_second_turn(app, hosts, reference,
                                                           lambda host: (rig.cut(host), cut.append(host)))
    finally:
        if cut:
            rig.restore(cut[0])
    assert len(second) > 5
    assert took < ERROR_BOUND_S, took
    errors = [r for r in second if not r["ok"]]
    if errors:  # one clear error, last
        assert len(errors) == 1 and second[-1] is errors[0], second[-3:]
        assert errors[0]["code"] == "swarm_error" and "\n" not in errors[0]["traceback"], errors[0]
        print(f"link of {cut[0]} cut after 5 tokens: one clear error after {took:.1f} s: {errors[0]['traceback']}")
    else:  # finished through the replica, identical
        assert second[-1]["stop"] is True
        assert "".join(r["outputs"] for r in second) == expected
        print(f"link of {cut[0]} cut after 5 tokens: finished through the replica, {len(second)} frames, {took:.1f} s")
    assert app.wait_for_sessions(0) == 0
    _wait_swarm(app, 3)


def test_killed_host_mid_answer_is_replaced_by_the_replica(rig, hosts, app, reference):
    second, took, killed, expected = _interrupt_second_turn(app, hosts, reference, rig.kill_host)  # crash its host
    assert not rig.pids(killed)
    assert all(r["ok"] for r in second), second[-3:]
    assert len(second) > 10 and second[-1]["stop"] is True
    assert "".join(r["outputs"] for r in second) == expected
    print(f"host {killed} killed after 5 tokens: the replica finished {len(second)} frames in {took:.1f} s")
    assert app.wait_for_sessions(0) == 0
    hosts.killed = killed


def test_hosts_join_and_leave_while_16_sessions_run(rig, hosts, app, tiny_model):
    joiner, hosts.killed = hosts.killed, None
    if joiner is None:
        pytest.skip("needs the host killed by the previous test")
    leaver = "c" if joiner == "b" else "b"
    sessions, turns_per_session = 16, 24  # 24 turns of <= 20 tokens fit max_length 512; then a new session
    turn = "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    errors: list[str] = []
    transcripts: list[list[str]] = []  # one per session opened: its answers, turn by turn
    churn_done = asyncio.Event()
    started = [asyncio.Event() for _ in range(sessions)]
    began = time.monotonic()

    async def chat(i: int) -> None:
        try:
            while True:  # a new session whenever one's budget is used up, until one turn after the churn
                async with await _open(app) as ws:
                    answers: list[str] = []
                    transcripts.append(answers)
                    while len(answers) < turns_per_session:
                        done = churn_done.is_set()
                        replies = await collect(ws, {"type": "generate", "inputs": turn, "max_new_tokens": 6},
                                                timeout=ERROR_BOUND_S)
                        if not replies[-1]["ok"]:
                            errors.append(f"session {i}: {replies[-1]}")
                            return
                        answers.append(replies[-1]["outputs"])
                        started[i].set()
                        if done:
                            return
        except Exception as e:  # noqa: BLE001 - every failure is a client error to count
            errors.append(f"session {i}: {type(e).__name__}: {str(e)[:300]}")
        finally:
            started[i].set()

    async def churn() -> None:
        await asyncio.gather(*(e.wait() for e in started))  # every session is generating
        print(f"churn: {sessions} sessions running at {time.monotonic() - began:.1f} s", flush=True)
        # join: the killed host comes back (new identity, same address) through a's address; its INITIAL_PEERS
        # line means its blocks are announced in the DHT
        hosts[joiner] = SwarmHost(rig, joiner, tiny_model, "2:4", hosts["a"].peers(), hosts.log_dir)
        while not hosts[joiner].peers_now():
            await asyncio.sleep(0.2)
        print(f"churn: {joiner} joined at {time.monotonic() - began:.1f} s", flush=True)
        # leave: the other 2:4 host shuts down cleanly while sessions run through it
        await asyncio.to_thread(rig.stop_host, leaver)
        print(f"churn: {leaver} left at {time.monotonic() - began:.1f} s", flush=True)
        churn_done.set()

    async def scenario():
        await asyncio.gather(churn(), *(chat(i) for i in range(sessions)))

    try:
        asyncio.run(asyncio.wait_for(scenario(), 150))
    finally:
        print(f"{len(transcripts)} sessions opened, turns: {[len(t) for t in transcripts]}, errors: {errors[:3]}")
    assert not errors, errors[:3]
    assert len(transcripts) >= sessions and all(transcripts), [len(t) for t in transcripts]
    # the same inputs in every session: greedy answers agree turn by turn, whichever hosts served them
    for k in range(max(map(len, transcripts))):
        assert len({t[k] for t in transcripts if len(t) > k}) == 1, k
    # sessions ran through the leaver, and moved to the joiner when it left
    assert hosts[leaver].last_open() > began and hosts[joiner].last_open() > began
    print(f"{sessions} sessions: {sum(map(len, transcripts))} turns in {time.monotonic() - began:.1f} s while "
          f"{joiner} joined and {leaver} left")
    assert app.wait_for_sessions(0) == 0
    assert _wait_swarm(app)["blocks_served"] == 4


def test_rig_cleans_up_leftovers_of_a_crashed_run():
    dead = f"{NS_PREFIX}4194999-x"  # above the kernel's pid limit: its owner is surely gone
    subprocess.run(["ip", "netns", "add", dead], check=True)
    try:
        assert dead in cleanup_stale()
        assert dead not in namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", dead], capture_output=True)
