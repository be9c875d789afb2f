"""The task-batched Conv4 against one plain Conv4 per task (the loop reference's; float64, random data)."""

import pytest
import torch
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from hypermaml import HyperMAMLConfig, MAMLConfig, RunConfig, TrainConfig, loop_reference, new_learner
from hypermaml.models import Conv4

TASKS, BATCH = 3, 4
# float64 agreement observed (worst path, dense channels-last; the dense path: features exact, gradients
# within 3.8e-15): features within 2.7e-14 (values O(1)); first- and second-order gradients within
# 1.3e-14 of each tensor's largest entry (which reaches 90 and 8262: absolute differences 4.5e-13, 6e-11).
FEATURE_ATOL, GRAD_RTOL_OF_MAX = 1e-12, 1e-12


def assert_gradient_close(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    """|a - b| within GRAD_RTOL_OF_MAX of b's largest entry (exactly equal where b is all zero)."""
    scale = b.abs().max().item()
    torch.testing.assert_close(a, b, atol=GRAD_RTOL_OF_MAX * scale, rtol=0, msg=lambda m: f"{name}: {m}")


PATHS = {
    # name: (Conv4 options, weights per task)
    "shared-dense": ({"dense_shared": True}, False),
    "shared-dense-channels-last": ({"dense_shared": True, "channels_last": True}, False),
    "shared-grouped": ({"dense_shared": False}, False),
    "per-task-grouped": ({}, True),
}


def task_images() -> torch.Tensor:
    """[T, B, 1, 28, 28]; task t's images are scaled by t + 1 and shifted by t, so that batch-norm
    statistics pooled over tasks, instead of per task, would give different features."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(TASKS, BATCH, 1, 28, 28, generator=g, dtype=torch.float64)
    scale = torch.arange(1, TASKS + 1, dtype=torch.float64).view(-1, 1, 1, 1, 1)
    return x * scale + (scale - 1)


def reference_features(params: dict[str, torch.Tensor], x: torch.Tensor, per_task: bool) -> torch.Tensor:
    """Task by task: Conv4 with that task's weights (or the shared ones) and that task's batch statistics."""
    features = []
    for t in range(x.shape[0]):
        named = {f"backbone.{k}": v[t] if per_task else v for k, v in params.items()}
        features.append(loop_reference.conv4_features(named, x[t]))
    return torch.stack(features)


def backbone_and_params(options: dict, per_task: bool) -> tuple[Conv4, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    backbone = Conv4(1, **options).double()
    params = dict(backbone.named_parameters())
    if per_task:  # distinct weights per task, so that a task computed with another's weights would show
        params = {
            k: torch.stack([v.detach() * (1 + 0.1 * t) for t in range(TASKS)]).requires_grad_()
            for k, v in params.items()
        }
    return backbone, params


def probe_like(t: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.randn(t.shape, generator=torch.Generator().manual_seed(seed), dtype=t.dtype)


@pytest.mark.parametrize("path", list(PATHS))
def test_conv4_features_and_gradients_equal_one_conv4_per_task(path):
    """Shared weights [O, I, 3, 3] (HyperMAML, head-only MAML) run one dense conv over all tasks' images
    (or, switched off, the grouped conv); per-task weights [T, O, I, 3, 3] (MAML's fast weights) one
    grouped conv. All must be, feature by feature and gradient by gradient — first and second order —
    each task's own Conv4."""
    options, per_task = PATHS[path]
    backbone, params = backbone_and_params(options, per_task)
    x = task_images().requires_grad_()
    features = functional_call(backbone, params, (x,))
    expected = reference_features(params, x, per_task)
    torch.testing.assert_close(features, expected, atol=FEATURE_ATOL, rtol=0)

    # First order: gradients of a loss that weighs every feature differently, w.r.t. weights and images.
    inputs = [*params.values(), x]
    names = [*params, "images"]
    probe = probe_like(features, 2)
    ours = torch.autograd.grad((features * probe).sum(), inputs, create_graph=True)
    theirs = torch.autograd.grad((expected * probe).sum(), inputs, create_graph=True)
    for name, a, b in zip(names, ours, theirs):
        assert b.abs().max() > 0, name
        assert_gradient_close(a, b, name)

    # Second order (what MAML's meta-gradient differentiates): gradients of a weighted sum of the gradients.
    weighted = lambda grads: sum((g * probe_like(g, 3 + i)).sum() for i, g in enumerate(grads))  # noqa: E731
    ours_2 = torch.autograd.grad(weighted(ours), inputs)
    theirs_2 = torch.autograd.grad(weighted(theirs), inputs)
    for name, a, b in zip(names, ours_2, theirs_2):
        assert_gradient_close(a, b, f"{name} (2nd order)")
    # (The last BN bias enters linearly before a ReLU: its second-order gradient is exactly zero.)
    assert all(b.abs().max() > 0 for name, b in zip(names, theirs_2) if "conv" in name or name == "images")


class RecordConvs(TorchFunctionMode):
    """Records (input batch, groups, channels-last input?) of every conv2d call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv2d or func is torch.nn.functional.conv2d:
            x = args[0]
            groups = kwargs.get("groups", args[6] if len(args) > 6 else 1)
            self.calls.append((x.shape[0], groups, x.is_contiguous(memory_format=torch.channels_last)))
        return func(*args, **kwargs)


@pytest.mark.parametrize("path", list(PATHS))
def test_conv4_runs_one_conv_per_block_dense_for_shared_weights_unless_switched_off(path):
    options, per_task = PATHS[path]
    backbone, params = backbone_and_params(options, per_task)
    with torch.no_grad(), RecordConvs() as record:
        functional_call(backbone, params, (task_images(),))
    dense = path.startswith("shared-dense")
    assert [(batch, groups) for batch, groups, _ in record.calls] == [
        (TASKS * BATCH, 1) if dense else (BATCH, TASKS)
    ] * 4
    # channels_last: the activations entering blocks 2-4 (64 channels) are in channels-last memory order.
    assert [last for _, _, last in record.calls[1:]] == [options.get("channels_last", False)] * 3


def test_conv4_batch_norm_statistics_are_those_of_each_task_alone():
    torch.manual_seed(1)
    backbone = Conv4(1).double()
    x = task_images()
    with torch.no_grad():
        batched = backbone(x)
        alone = backbone(x[1:2])[0]
        named = {f"backbone.{k}": v for k, v in backbone.named_parameters()}
        pooled = loop_reference.conv4_features(named, x.flatten(0, 1)).view_as(batched)
    torch.testing.assert_close(batched[1], alone, atol=1e-12, rtol=0)
    # Statistics pooled over the tasks would be far off: the tests above can tell the two apart.
    assert (pooled - batched).abs().max() > 1e-2


def test_conv4pool_dense_and_grouped_agree_on_larger_images():
    """Conv4Pool (global spatial mean; 32x32 images end at 2x2) gives the same features on both paths."""
    torch.manual_seed(4)
    dense, grouped = Conv4(1, global_pool=True).double(), Conv4(1, global_pool=True, dense_shared=False).double()
    grouped.load_state_dict(dense.state_dict())
    x = torch.rand(TASKS, BATCH, 1, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        a, b = dense(x), grouped(x)
    assert a.shape == (TASKS, BATCH, 64)
    torch.testing.assert_close(a, b, atol=FEATURE_ATOL, rtol=0)


@pytest.mark.parametrize("dense_conv,channels_last", [(True, False), (False, True)])
def test_learners_take_the_backbone_options_from_the_train_config(dense_conv, channels_last):
    for algorithm, algo in (("maml", MAMLConfig()), ("hypermaml", HyperMAMLConfig(hn_hidden=8))):
        train = TrainConfig(algorithm=algorithm, dense_conv=dense_conv, channels_last=channels_last)
        learner = new_learner(RunConfig(train, algo))
        assert (learner.backbone.dense_shared, learner.backbone.channels_last) == (dense_conv, channels_last)
