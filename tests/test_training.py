"""Training runs end to end on a small Digits-Det: tracking, resume, failure policy, learning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from ghm.detection.model import build_detector, load_weights
from ghm.detection.schedule import lr_factor, set_lr_factor
from ghm.detection.telemetry import observed_loss_inputs
from ghm.detection.training import NonFiniteLossError, train, warm_ghm_state
from ghm.losses import GHMC, GHMR, FocalLoss, SmoothL1Loss
from ghm.run import Job
from tests.conftest import ROOT, SMALL_DATA, build_test_job


def small_job(tmp_path: Path, tracking_uri: str, *overrides: str, name: str = "ckpt") -> Job:
    return build_test_job(["train=smoke", *SMALL_DATA, f"checkpoint_dir={tmp_path / name}", f"mlflow.tracking_uri={tracking_uri}",
                           "mlflow.experiment_name=test", *overrides])


def only_run(tracking_uri: str):
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.slow
def test_smoke_run_leaves_a_complete_mlflow_run(tmp_path: Path, tracking_uri: str) -> None:
    result = train(small_job(tmp_path, tracking_uri, "train.epochs=2", "train.max_iters_per_epoch=2"))
    client, run = only_run(tracking_uri)
    assert run.info.run_id == result.run_id and run.info.status == "FINISHED"
    assert run.data.params["loss.cls.bins"] == "30" and run.data.params["train.epochs"] == "2"
    tags = run.data.tags
    assert tags["loss_family"] == "ghm" and tags["baseline"] == "false" and tags["device"] == "cpu"
    assert tags["dataset"].startswith("digits-det-") and tags["code_version"]
    backbone = client.get_run(tags["backbone_run_id"])  # the pretraining that made its backbone, in the same store
    assert backbone.data.tags["backbone_key"] and client.get_experiment(backbone.info.experiment_id).name == "backbone_pretraining"
    for metric in ("train_loss", "train_loss_cls", "train_loss_box", "lr", "images_per_second", "mAP", "AP50", "APs"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2], metric
    assert run.data.metrics["mAP"] == result.metrics["mAP"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "coco_eval.txt", "evaluation.json", "figures"} <= artifacts
    for phase in ("start", "middle", "end"):
        names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, f"figures/{phase}")}
        assert names == {"gradient_norm_cls.png", "gradient_norm_reg.png", "reformulated_cls.png", "reformulated_reg.png"}
    assert result.checkpoint.is_file()


@pytest.mark.slow
def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path: Path, tracking_uri: str) -> None:
    settings = ("train.epochs=2", "train.max_iters_per_epoch=3", "train.figures=false", "loss.cls.momentum=0.75")
    straight = small_job(tmp_path, f"sqlite:///{tmp_path / 'straight.db'}", *settings, name="straight")
    train(straight)

    def interrupt(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_job(tmp_path, tracking_uri, *settings, name="resumed"), on_epoch=interrupt)
    client, run = only_run(tracking_uri)
    assert run.info.status == "KILLED"
    resumed = small_job(tmp_path, tracking_uri, *settings, name="resumed")
    train(resumed)
    client, run = only_run(tracking_uri)  # the same run, continued
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert resumed.model.cls_loss.density.acc_sum.abs().sum() > 0  # GHM's EMA came back with the checkpoint


@pytest.mark.slow
def test_nonfinite_loss_fails_the_run_naming_the_step(tmp_path: Path, tracking_uri: str) -> None:
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 1, step \d+"):
        train(small_job(tmp_path, tracking_uri, "loss=focal", "train.lr=1e12", "train.warmup_iters=0", "train.clip_grad_norm=null",
                        "train.max_iters_per_epoch=6"))
    client, run = only_run(tracking_uri)
    assert run.info.status == "FAILED" and "non-finite loss" in run.data.tags["error"]
    assert "error.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_nonfinite_loss_can_be_skipped_and_counted(tmp_path: Path, tracking_uri: str) -> None:
    train(small_job(tmp_path, tracking_uri, "loss=focal", "train.lr=1e12", "train.warmup_iters=0", "train.clip_grad_norm=null",
                    "train.max_iters_per_epoch=6", "train.nonfinite=skip", "train.figures=false"))
    _, run = only_run(tracking_uri)
    assert run.info.status == "FINISHED" and run.data.metrics["skipped_steps"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ghm", "focal"])
def test_loss_decreases_on_digits_det(tmp_path: Path, tracking_uri: str, loss: str) -> None:
    job = small_job(tmp_path, tracking_uri, f"loss={loss}", "train.figures=false", "train.lr=0.02", "train.warmup_iters=5")
    images, targets = next(iter(job.loader))
    model = job.model.train()
    losses = []
    for step in range(40):
        set_lr_factor(job.optimizer, lr_factor(job.config.train, step, 40))
        out = model(images, targets)
        loss_value = out["classification"] + out["bbox_regression"]
        job.optimizer.zero_grad()
        loss_value.backward()
        job.optimizer.step()
        losses.append(loss_value.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, losses


@pytest.mark.slow
def test_a_warm_start_loads_the_detector_and_warms_ghms_averages_without_training(tmp_path: Path, tracking_uri: str) -> None:
    """A focal detector's weights as GHM's start (model.weights with the seed in its path), GHM's EMA filled by the starting
    detector's batches: no parameter and no BatchNorm statistic moves, and the counts are those of the batches seen."""
    source = small_job(tmp_path, tracking_uri, "loss=focal", "seed=3", name="focal")
    torch.save({"model": source.model.state_dict()}, tmp_path / "focal_seed3.pt")
    job = small_job(tmp_path, tracking_uri, "loss=ghm", "seed=3", f"model.weights={tmp_path}/focal_seed${{seed}}.pt",
                    "model.ghm_scope=whole_batch", "loss.cls.momentum=0.5", "train.ghm_state_warmup=2", "train.figures=false")
    before = {k: v.clone() for k, v in job.model.state_dict().items()}
    for key, value in source.model.state_dict().items():
        torch.testing.assert_close(before[key], value)  # the focal detector, loaded for seed 3
    warm_ghm_state(job, 2)
    after = {k: v.clone() for k, v in job.model.state_dict().items()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"cls_loss.density.acc_sum", "reg_loss.density.acc_sum"}, changed
    # Two whole-batch calls with momentum 0.5 from zero: acc = 0.5 * (0.5 * k1) + 0.5 * k2 in the regions seen twice.
    counts = []
    job.sampler.set_epoch(0)
    job.data.train.set_epoch(0, 3)
    reference = GHMC(bins=30)
    with torch.no_grad(), observed_loss_inputs(job.model) as seen:
        for step, (images, targets) in enumerate(job.loader):
            if step == 2:
                break
            job.model.eval()
            for module in job.model.modules():
                if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.train()
            job.model(images, targets)
    for inputs in seen:
        reference(inputs.cls_logits, inputs.cls_targets, inputs.cls_weights)
        counts.append(reference.stats.counts)
    expected = torch.where(counts[1] > 0, 0.25 * counts[0] + 0.5 * counts[1], 0.5 * counts[0])
    torch.testing.assert_close(after["cls_loss.density.acc_sum"], expected)


def _two_digit_batch(images: int, seed: int = 0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """``images`` random pictures, each with two digits' boxes (the second image's boxes moved against the first's)."""
    generator = torch.Generator().manual_seed(seed)
    pictures = [torch.rand(3, 96, 96, generator=generator) for _ in range(images)]
    targets = [{"boxes": torch.tensor([[10.0 + 5 * i, 10.0, 30.0 + 5 * i, 40.0], [50.0, 20.0 + 3 * i, 70.0, 44.0 + 3 * i]]),
                "labels": torch.tensor([2 + i, 5])} for i in range(images)]
    return pictures, targets


@pytest.mark.parametrize(("scope", "calls"), [("whole_batch", 1), ("per_level", 4), ("official", 8)])
def test_ghm_scope_calls_ghm_once_per_group_and_fpn_level(scope: str, calls: int) -> None:
    seen = {"cls": 0, "reg": 0}
    images, targets = _two_digit_batch(4)
    torch.manual_seed(0)
    model = build_detector(10, GHMC(bins=30), GHMR(), anchor_sizes=[12, 24, 48, 96], min_size=96, max_size=96,
                           ghm_scope=scope, ghm_group_images=2, images_per_step=4).train()
    for loss, key in ((model.cls_loss, "cls"), (model.reg_loss, "reg"), *((m, "cls") for m in model.cls_loss_groups),
                      *((m, "reg") for m in model.reg_loss_groups)):
        loss.register_forward_hook(lambda *_, key=key: seen.__setitem__(key, seen[key] + 1))
    model(images, targets)
    assert seen == {"cls": calls, "reg": calls}
    assert len(model.cls_loss_groups) == (1 if scope == "official" else 0)  # 4 images in groups of 2: one copy beside cls_loss


def test_official_scope_is_the_mean_over_groups_of_per_level_sums_each_with_its_own_ema() -> None:
    """The official wiring recomputed from the whole batch's loss inputs: fresh GHM modules per group (one GPU's EMA each),
    called per FPN level on that group's images, levels summed, groups averaged, over two steps (the EMA carries over)."""
    from copy import deepcopy

    cls, reg = GHMC(bins=30, momentum=0.75), GHMR(momentum=0.7, loss_weight=10.0)
    reference = [(deepcopy(cls), deepcopy(reg)) for _ in range(2)]
    torch.manual_seed(0)
    model = build_detector(10, cls, reg, anchor_sizes=[12, 24, 48, 96], min_size=96, max_size=96,
                           ghm_scope="official", ghm_group_images=2, images_per_step=4).train()
    for step in range(2):
        images, targets = _two_digit_batch(4, seed=step)
        with observed_loss_inputs(model) as seen:
            losses = model(images, targets)
        whole = seen[0]
        levels = model.anchor_generator.num_anchors_per_level
        anchors = sum(levels)
        foreground = whole.cls_targets.reshape(4, anchors, -1).sum(-1) > 0  # [image, anchor]
        box_rows = torch.cumsum(foreground.reshape(-1).long(), 0).reshape(4, anchors) - 1  # row of each fg anchor in box_*
        expected_cls, expected_reg = [], []
        for group, (group_cls, group_reg) in enumerate(reference):
            per_level_cls, per_level_reg = [], []
            start = 0
            for size in levels:
                rows = [i * anchors + a for i in (2 * group, 2 * group + 1) for a in range(start, start + size)]
                fg = [int(box_rows[i, a]) for i in (2 * group, 2 * group + 1) for a in range(start, start + size) if foreground[i, a]]
                per_level_cls.append(group_cls(whole.cls_logits[rows], whole.cls_targets[rows], whole.cls_weights[rows]))
                per_level_reg.append(group_reg(whole.box_deltas[fg], whole.box_targets[fg], whole.box_weights[fg]))
                start += size
            expected_cls.append(sum(per_level_cls))
            expected_reg.append(sum(per_level_reg))
        torch.testing.assert_close(losses["classification"], sum(expected_cls) / 2, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(losses["bbox_regression"], sum(expected_reg) / 2, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(model.cls_loss_groups[0].density.acc_sum, reference[1][0].density.acc_sum)
    assert not torch.equal(model.cls_loss.density.acc_sum, model.cls_loss_groups[0].density.acc_sum)  # each group its own EMA


def test_official_scope_refuses_a_batch_it_cannot_group() -> None:
    model = build_detector(10, GHMC(), GHMR(), min_size=96, max_size=96, ghm_scope="official", ghm_group_images=2,
                           images_per_step=4).train()
    images, targets = _two_digit_batch(3)
    with pytest.raises(ValueError, match="groups of 2 images"):
        model(images, targets)


@pytest.mark.parametrize("scope", ["per_level", "official"])
def test_baseline_losses_see_the_whole_batch_in_every_scope(scope: str) -> None:
    images, targets = _two_digit_batch(2)
    values = []
    for chosen in ("whole_batch", scope):
        torch.manual_seed(0)
        model = build_detector(10, FocalLoss(), SmoothL1Loss(), anchor_sizes=[12, 24, 48, 96],
                               min_size=96, max_size=96, ghm_scope=chosen, images_per_step=2).train()
        values.append({k: v.item() for k, v in model(images, targets).items()})
    assert values[0] == values[1]


def test_local_weights_load_with_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_detector(10, FocalLoss(), SmoothL1Loss())
    torch.save({"model": source.state_dict()}, tmp_path / "weights.pt")
    torch.manual_seed(2)
    target = build_detector(10, FocalLoss(), SmoothL1Loss())
    load_weights(target, tmp_path / "weights.pt")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)

    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    torch.save({"model": Payload()}, tmp_path / "evil.pt", _use_new_zipfile_serialization=True)
    with pytest.raises(Exception, match=r"(?i)weights only|unpickl"):
        load_weights(target, tmp_path / "evil.pt")


@pytest.mark.slow
def test_launch_trains_evaluates_and_tracks(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run([sys.executable, "launch.py", "train=smoke", "loss=focal", *SMALL_DATA, f"hydra.run.dir={tmp_path}",
                             f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=test"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "focal: mAP" in result.stderr + result.stdout
    _, run = only_run(uri)
    assert run.info.status == "FINISHED" and run.data.tags["baseline"] == "true"
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow
def test_torchrun_ddp_on_two_cpu_processes(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "launch.py", "train=smoke",
                             "train.batch_size=4", *SMALL_DATA, f"hydra.run.dir={tmp_path}", f"mlflow.tracking_uri={uri}",
                             "mlflow.experiment_name=test"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    _, run = only_run(uri)  # one run, tracked by rank 0
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
