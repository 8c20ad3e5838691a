"""Nothing lost, nothing mixed up: one owner per run directory, sealed rounds,
a DP run never read as non-private, and no half-written or foreign folder
left behind (or removed) by a failed command.

Tiny runs in-process where possible; real processes only where the operating
system is the point (two owners at once, a SIGKILLed owner)."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import synthfed.checkpoint as checkpoint
import synthfed.generation as generate_mod
from synthfed.checkpoint import (
    CHECKSUM_FILE,
    latest_ledger,
    latest_round_dir,
    load_round,
    read_round_ledger,
    reseal_round,
    round_seal,
    verify_round,
)
from synthfed.config import TrainConfig
from synthfed.errors import InputError, IntegrityError, RunLocked, SynthfedError
from synthfed.generation import generate_dataset, load_generator
from synthfed.privacy.ledger import PrivacyLedger
from synthfed.locking import RUN_LOCK_FILE, lock_holder, output_lock, run_lock
from synthfed.training import train

TINY = dict(data="digits", image_size=8, preset="tiny", num_clients=2, num_train_timesteps=20, batch_size=64,
            rounds=1, seed=3)
CLI = ["--data", "digits", "--image-size", "8", "--preset", "tiny", "--clients", "2", "--timesteps", "20",
       "--batch-size", "64", "--seed", "3"]
EMA = "rounds/round-0002/global/ema/diffusion_pytorch_model.safetensors"
GEN = dict(per_class=2, num_steps=2, batch_size=4)


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    """A finished 2-round run at epsilon 8 (never modified: tests damage copies)."""
    run = tmp_path_factory.mktemp("reliability") / "dp-run"
    train(TrainConfig(**{**TINY, "rounds": 2}, epsilon=8.0).validate(), run)
    return run


@pytest.fixture
def run(dp_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(dp_run, copy)
    return copy


def _config(run: Path) -> TrainConfig:
    return TrainConfig.from_dict(json.loads((run / "run.json").read_text())["config"])


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _unseal(run: Path) -> None:
    """Make ``run`` look written before rounds were sealed."""
    for f in (run / "rounds").rglob(CHECKSUM_FILE):
        f.unlink()
    info = json.loads((run / "run.json").read_text())
    del info["integrity"]
    (run / "run.json").write_text(json.dumps(info))


def _spawn_train(run: Path, *extra: str) -> subprocess.Popen:
    cmd = [str(Path(sys.executable).parent / "synthfed"), "train", *CLI, *extra, "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert predicate(), f"{what} did not happen (exit {proc.poll()}): {proc.stderr.read() if proc.poll() else ''}"


# --------------------------------------------------------------------------- one owner


@pytest.mark.timeout(300)
def test_a_second_train_on_the_same_out_is_refused_and_the_first_run_completes_intact(tmp_path):
    # Prepare: a real first process, holding the run's lock
    run = tmp_path / "run"
    first = _spawn_train(run, "--rounds", "3", "--epsilon", "8", "--warm-start", "none", "--local-epochs", "2")  # slow enough to be overtaken
    try:
        _wait_for(lambda: lock_holder(run / RUN_LOCK_FILE) == first.pid, first, "the first train taking the lock")
        # Execute: a second train on the same --out (other settings, so a mix would show)
        second = subprocess.run([str(Path(sys.executable).parent / "synthfed"), "train", *CLI, "--rounds", "2",
                                 "--seed", "4", "--out", str(run)], capture_output=True, text=True, timeout=240,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        still_running = first.poll() is None
        out, err = first.communicate(timeout=240)
    finally:
        first.kill()
        first.wait()
    # Assert: refused at once, naming the owner; the first finished alone
    assert still_running, "the first train ended before the second was refused: the test proves nothing"
    assert second.returncode != 0
    assert f"in use by process {first.pid}" in second.stderr
    assert first.returncode == 0, err
    info = json.loads((run / "run.json").read_text())
    assert info["config"]["seed"] == 3 and info["config"]["rounds"] == 3
    round_dir, ledger = latest_ledger(run)
    assert round_dir.name == "round-0003"
    state = round_seal(round_dir).read_json("state.json")
    assert [h["round"] for h in state["history"]] == [1, 2, 3]
    rounds = {cid: c.rounds_participated() for cid, c in PrivacyLedger.from_dict(ledger).clients.items()}
    assert rounds == {"0": [1, 2, 3], "1": [1, 2, 3]}
    verify_round(round_dir)  # every file as written
    assert not (run / RUN_LOCK_FILE).exists()


@pytest.mark.timeout(300)
def test_the_lock_dies_with_a_sigkilled_owner_and_a_new_train_resumes(tmp_path):
    # Prepare: a real process killed with SIGKILL once its first round is published
    run = tmp_path / "run"
    proc = _spawn_train(run, "--rounds", "3")
    try:
        _wait_for(lambda: (run / "LATEST").is_file(), proc, "the first round")
        assert lock_holder(run / RUN_LOCK_FILE) == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert (run / RUN_LOCK_FILE).exists()  # left behind, naming a dead process
    # Execute
    result = train(_config(run), run, resume=True)
    # Assert: the stale file did not block; every round once; nothing half-written
    assert [h["round"] for h in result.history] == [1, 2, 3]
    assert not [p for p in (run / "rounds").iterdir() if p.name.startswith(".")]
    assert not (run / RUN_LOCK_FILE).exists()


def test_a_locked_run_is_refused_in_process_too_and_a_new_run_dir_is_not_left_behind(tmp_path):
    # Prepare: this process owns the run directory through another lock handle
    run = tmp_path / "run"
    config = TrainConfig(**TINY).validate()
    with run_lock(run, "synthfed train"):
        # Execute
        with pytest.raises(RunLocked) as refused:
            train(config, run)
        # Assert
        assert str(refused.value) == (f"{run} is in use by process {os.getpid()} (synthfed train); "
                                       "wait for it or choose another --out")
        assert lock_holder(run / RUN_LOCK_FILE) == os.getpid()
    assert not run.exists()  # made for the lock, left empty: removed (rmdir only)


def test_a_second_generate_on_the_same_out_is_refused(dp_run, tmp_path):
    # Prepare
    out = tmp_path / "ds"
    gen = load_generator(dp_run)
    with output_lock(out, "synthfed generate"):
        # Execute / Assert
        with pytest.raises(RunLocked, match=f"in use by process {os.getpid()} \\(synthfed generate\\)"):
            generate_dataset(gen, out, **GEN)
    assert not out.exists() and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- integrity


def test_a_flipped_byte_in_a_tensor_file_is_refused_by_resume_and_generate(run):
    # Prepare
    _flip_middle_byte(run / EMA)
    config = _config(run).replace(rounds=3)
    # Execute
    with pytest.raises(IntegrityError) as resumed:
        train(config, run, resume=True)
    with pytest.raises(IntegrityError) as generated:
        load_generator(run)
    with pytest.raises(IntegrityError) as folder:
        load_generator(run / "rounds/round-0002/global/ema")
    # Assert: one error naming the file, the checksums and what to do
    for exc in (resumed, generated, folder):
        text = str(exc.value)
        assert text.startswith(f"{run / EMA} does not match its checksum (written ")
        assert "the file is damaged; resume from an earlier round or retrain" in text
    assert (run / "LATEST").read_text() == "round-0002"  # resume wrote nothing


def test_a_pickle_renamed_safetensors_is_refused_by_name(run, tmp_path):
    # Prepare: a pickle in place of the weights, in the run and in a copy without checksums
    torch.save({"w": torch.zeros(3)}, run / EMA)
    bare = tmp_path / "bare-copy" / "ema"
    shutil.copytree(run / "rounds/round-0002/global/ema", bare)
    (bare / CHECKSUM_FILE).unlink()
    # Execute
    with pytest.raises(IntegrityError) as in_run:
        load_generator(run)
    with pytest.raises(InputError) as unsealed:
        load_generator(bare)
    # Assert
    assert str(in_run.value).startswith(f"{run / EMA} does not match its checksum")
    assert str(unsealed.value).startswith(f"{bare / 'diffusion_pytorch_model.safetensors'} (with ")
    assert "cannot be loaded as a model" in str(unsealed.value) and "\n" not in str(unsealed.value)


def test_a_truncated_client_file_of_an_unsealed_round_is_refused_by_name(tmp_path):
    # Prepare: a personalized run whose rounds predate sealing (no checksums, no "integrity")
    run = tmp_path / "run"
    train(TrainConfig(**TINY, strategy="fedper", head="out").validate(), run)
    _unseal(run)
    round_dir = latest_round_dir(run)
    client = round_dir / "clients" / "client-00.safetensors"
    client.write_bytes(client.read_bytes()[:100])
    # Execute
    ok = load_generator(run, client=1)  # an old round still loads
    with pytest.raises(InputError) as refused:
        load_generator(run, client=0)
    # Assert
    assert ok.source["client"] == 1
    assert str(refused.value).startswith(f"{client} is not a readable safetensors file (")


def test_a_deleted_checksum_file_of_a_sealed_run_is_refused(run):
    # Prepare
    (run / "rounds/round-0002" / CHECKSUM_FILE).unlink()
    # Execute / Assert
    with pytest.raises(IntegrityError, match=f"^{run / 'rounds/round-0002' / CHECKSUM_FILE} is missing"):
        load_generator(run)


@pytest.mark.parametrize("content", [b"\x00\xff\xfe garbage \x89PNG", b"round-0009", b""])
def test_a_damaged_latest_is_one_error_naming_it(run, content):
    # Prepare
    (run / "LATEST").write_bytes(content)
    # Execute
    with pytest.raises(IntegrityError) as exc:
        load_generator(run)
    with pytest.raises(IntegrityError) as resumed:
        train(_config(run), run, resume=True)
    # Assert: names the file, says how to repair it
    for e in (exc, resumed):
        assert str(e.value).startswith(f"{run / 'LATEST'} ")
        assert "write 'round-0002' (the newest complete round) into it" in str(e.value)
        assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- the ledger


@pytest.mark.parametrize("sealed", [True, False])
def test_a_deleted_ledger_of_a_dp_run_is_an_integrity_error_not_non_private(run, sealed):
    # Prepare: (also as a round written before rounds were sealed)
    (run / "rounds/round-0002/ledger.json").unlink()
    if not sealed:
        _unseal(run)
    # Execute
    with pytest.raises(IntegrityError) as report:
        latest_ledger(run)
    with pytest.raises(IntegrityError) as generated:
        load_generator(run)
    # Assert
    for exc in (report, generated):
        assert str(exc.value).startswith(
            f"{run} was trained with --epsilon 8 but its ledger (rounds/round-0002/ledger.json) is missing: ")
        assert "without differential privacy" not in str(exc.value)


def test_a_run_without_dp_and_a_flower_run_before_collect_legitimately_have_no_ledger(run):
    # Prepare: the same files, read as a Flower run whose nodes keep their ledgers (never sealed with one)
    round_dir = run / "rounds/round-0002"
    (round_dir / "ledger.json").unlink()
    info = json.loads((run / "run.json").read_text())
    flower = {**info, "engine": "flower"}
    plain = {**info, "config": {**info["config"], "epsilon": None}}
    pfdm = {**info, "config": {**info["config"], "epsilon": None, "strategy": "pfdm"}}
    reseal_round(round_dir, {"ledger.json"})
    # Execute / Assert
    assert read_round_ledger(round_dir, flower) is None
    assert read_round_ledger(round_dir, plain) is None
    with pytest.raises(IntegrityError, match="--epsilon 8"):
        read_round_ledger(round_dir, info)
    with pytest.raises(IntegrityError, match="was trained with --strategy pfdm but its ledger"):
        read_round_ledger(round_dir, pfdm)


def test_a_published_ledger_is_sealed_and_a_damaged_round_is_never_resealed(run):
    # Prepare
    round_dir = run / "rounds/round-0002"
    ledger = json.loads((round_dir / "ledger.json").read_text())
    (round_dir / "ledger.json").write_text(json.dumps(ledger))  # as collect-ledgers rewrites it
    # Execute
    reseal_round(round_dir, {"ledger.json"})
    _flip_middle_byte(run / EMA)
    # Assert: the new ledger reads back verified; the damage is refused, not blessed
    assert read_round_ledger(round_dir) == ledger
    with pytest.raises(IntegrityError, match="does not match its checksum"):
        reseal_round(round_dir, {"ledger.json"})


# --------------------------------------------------------------------------- copied model folders


def test_a_copied_model_folder_carries_its_checksums_and_a_flipped_byte_is_refused(run, tmp_path):
    # Prepare
    good, bad = tmp_path / "good" / "ema", tmp_path / "bad" / "ema"
    shutil.copytree(run / "rounds/round-0002/global/ema", good)
    shutil.copytree(run / "rounds/round-0002/global/ema", bad)
    _flip_middle_byte(bad / "diffusion_pytorch_model.safetensors")
    privacy = json.loads((good / "privacy.json").read_text())
    privacy["clients"][0]["eps_upper"] = 0.01  # a stronger claim than the ledger's
    # Execute
    loaded = load_generator(good)
    with pytest.raises(IntegrityError) as refused:
        load_generator(bad)
    forged = tmp_path / "forged" / "ema"
    shutil.copytree(good, forged)
    (forged / "privacy.json").write_text(json.dumps(privacy))
    with pytest.raises(IntegrityError) as forged_refused:
        load_generator(forged)
    # Assert
    assert loaded.privacy["differentially_private"] is True
    assert str(refused.value).startswith(f"{bad / 'diffusion_pytorch_model.safetensors'} does not match its checksum")
    assert "copy the folder again from its run" in str(refused.value)
    assert str(forged_refused.value).startswith(f"{forged / 'privacy.json'} does not match its checksum")


# --------------------------------------------------------------------------- nothing half-written, nothing foreign removed


def test_a_failed_generate_leaves_no_partial_folder_and_removes_nothing_it_did_not_make(dp_run, tmp_path,
                                                                                        monkeypatch):
    # Prepare: a sampler that fails on its second batch; an empty --out the user made; a stranger's folder
    # under the name the old versions used for their partial output
    calls = []

    def failing_sample(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("sampler failed mid-way")
        return real_sample(*args, **kwargs)

    real_sample = generate_mod.sample
    monkeypatch.setattr(generate_mod, "sample", failing_sample)
    out = tmp_path / "ds"
    out.mkdir()
    stranger = tmp_path / ".ds.partial"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("not synthfed's")
    gen = load_generator(dp_run)
    # Execute
    with pytest.raises(RuntimeError, match="mid-way"):
        generate_dataset(gen, out, **GEN)
    # Assert
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ds.partial", "ds"]
    assert not list(out.iterdir()) and (stranger / "keep.txt").read_text() == "not synthfed's"


def test_a_full_disk_during_generate_is_one_error_and_leaves_nothing(dp_run, tmp_path, monkeypatch):
    # Prepare
    def disk_full(folder, *args, **kwargs):
        (folder / "images" / "000000.png").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(generate_mod, "write_images", disk_full)
    gen = load_generator(dp_run)
    # Execute
    with pytest.raises(SynthfedError) as exc:
        generate_dataset(gen, tmp_path / "ds", **GEN)
    # Assert
    assert str(exc.value) == (f"could not write the dataset into {tmp_path / 'ds'} (No space left on device); "
                              "nothing was written there")
    assert not list(tmp_path.iterdir())


def test_an_existing_non_empty_out_is_refused_and_left_alone(dp_run, tmp_path):
    # Prepare
    out = tmp_path / "ds"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    # Execute
    with pytest.raises(FileExistsError, match="is not empty"):
        generate_dataset(load_generator(dp_run), out, **GEN)
    # Assert
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_a_full_disk_while_saving_a_round_keeps_the_previous_round_and_resume_completes(tmp_path, monkeypatch):
    # Prepare: round 1 saved, round 2's save runs out of space half-way
    run = tmp_path / "run"
    config = TrainConfig(**{**TINY, "rounds": 2}).validate()
    train(config, run, stop_after_round=1)
    real_write = checkpoint.write_checksums

    def disk_full(folder):
        if folder.name.endswith(".tmp"):  # the round's own record, the last write before publishing
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(folder)

    monkeypatch.setattr(checkpoint, "write_checksums", disk_full)
    # Execute
    with pytest.raises(SynthfedError) as exc:
        train(config, run, resume=True)
    monkeypatch.undo()
    after_failure = sorted(p.name for p in (run / "rounds").iterdir())
    latest_after_failure = latest_round_dir(run).name
    result = train(config, run, resume=True)
    # Assert
    assert "could not write" in str(exc.value) and "No space left on device" in str(exc.value)
    assert after_failure == ["round-0001"] and latest_after_failure == "round-0001"
    assert [h["round"] for h in result.history] == [1, 2]


def test_a_kill_between_publishing_a_round_and_moving_latest_redoes_that_round(run):
    # Prepare: round 2 is on disk but LATEST still names round 1; a dead owner's temporary folders
    (run / "LATEST").write_text("round-0001")
    stale = [run / "rounds" / ".round-0003.k1ll3d.tmp", run / "rounds" / ".round-0002.tmp"]
    for folder in stale:
        (folder / "global").mkdir(parents=True)
    before = json.loads((run / "rounds/round-0002/ledger.json").read_text())
    # Execute
    result = train(_config(run), run, resume=True)
    # Assert: round 2 redone once, the same release (not counted twice); debris gone
    assert [h["round"] for h in result.history] == [1, 2]
    assert read_round_ledger(run / "rounds/round-0002") == before
    assert sorted(p.name for p in (run / "rounds").iterdir()) == ["round-0001", "round-0002"]
    spec = checkpoint.ModelSpec.from_dict(json.loads((run / "run.json").read_text())["model"])
    assert load_round(run / "rounds/round-0002", spec, shared_keys=set(), local_keys=set()).server_round == 2
