"""Correctness of the vectorized learners against plain per-task autograd (float64, random data)."""

import pytest
import torch
import torch.nn.functional as F

from hypermaml import loop_reference
from hypermaml.algorithms import MAML, HyperMAML, adapt_heads
from hypermaml.config import HyperMAMLConfig, MAMLConfig
from hypermaml.episodes import Episodes
from hypermaml.models import FEATURES

WAY, SHOT, QUERY, TASKS = 5, 2, 3, 4


def random_episodes(tasks=TASKS, way=WAY, shot=SHOT, query=QUERY, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    labels = lambda k: torch.arange(way).repeat_interleave(k).expand(tasks, -1).clone()  # noqa: E731
    return Episodes(
        torch.rand(tasks, way * shot, 1, 28, 28, generator=g, dtype=dtype),
        labels(shot),
        torch.rand(tasks, way * query, 1, 28, 28, generator=g, dtype=dtype),
        labels(query),
    )


@pytest.mark.parametrize("inner_params", ["all", "head"])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("inner_steps", [1, 3])
def test_vectorized_maml_meta_gradient_equals_per_task_loop(inner_params, first_order, inner_steps):
    cfg = MAMLConfig(inner_steps=inner_steps, inner_lr=0.3, first_order=first_order, inner_params=inner_params)
    torch.manual_seed(1)
    model = MAML(cfg, WAY, 1, 28).double()
    ep = random_episodes()
    loss, _ = model.meta_loss(ep, epoch=0)
    vectorized = torch.autograd.grad(loss, list(model.parameters()))
    reference = torch.autograd.grad(loop_reference.maml_meta_loss(model, cfg, ep), list(model.parameters()))
    for (name, _), v, r in zip(model.named_parameters(), vectorized, reference):
        assert r.abs().max() > 0 or "bn" in name or "conv" in name  # head grads are never trivially zero
        torch.testing.assert_close(v, r, atol=1e-5, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
    # Second order really differs from first order (the test would not notice a silently dropped term).
    if not first_order:
        fo = MAML(
            MAMLConfig(inner_steps=inner_steps, inner_lr=0.3, first_order=True, inner_params=inner_params), WAY, 1, 28
        ).double()
        fo.load_state_dict(model.state_dict())
        fo_grads = torch.autograd.grad(fo.meta_loss(ep, 0)[0], list(fo.parameters()))
        assert max((a - b).abs().max().item() for a, b in zip(fo_grads, vectorized)) > 1e-4


def test_maml_chunks_of_tasks_give_the_same_gradient_as_one_pass():
    cfg = MAMLConfig(inner_steps=2, inner_lr=0.3)
    torch.manual_seed(2)
    model = MAML(cfg, WAY, 1, 28).double()
    ep = random_episodes(tasks=4)
    whole = torch.autograd.grad(model.meta_loss(ep, 0)[0], list(model.parameters()))
    halves = [
        Episodes(ep.x_support[s], ep.y_support[s], ep.x_query[s], ep.y_query[s]) for s in (slice(0, 2), slice(2, 4))
    ]
    parts = [torch.autograd.grad(model.meta_loss(h, 0)[0] / 2, list(model.parameters())) for h in halves]
    for w, a, b in zip(whole, *parts):
        torch.testing.assert_close(w, a + b, atol=1e-10, rtol=0)


def manually_adapted_query_logits(model: MAML, ep: Episodes, steps: int) -> torch.Tensor:
    """Query logits after `steps` plain SGD steps per task, one task at a time (loop reference's Conv4)."""
    cfg = model.cfg
    adapted = [k for k, _ in model.named_parameters() if cfg.inner_params == "all" or k.startswith("head.")]
    logits = []
    with torch.enable_grad():
        for t in range(ep.tasks):
            fast = {k: v.detach().clone().requires_grad_(k in adapted) for k, v in model.named_parameters()}
            for _ in range(steps):
                loss = F.cross_entropy(loop_reference.maml_forward(fast, ep.x_support[t]), ep.y_support[t])
                grads = torch.autograd.grad(loss, [fast[k] for k in adapted])
                fast.update({k: (fast[k] - cfg.inner_lr * g).detach().requires_grad_() for k, g in zip(adapted, grads)})
            logits.append(loop_reference.maml_forward(fast, ep.x_query[t]).detach())
    return torch.stack(logits)


@pytest.mark.parametrize("inner_params", ["all", "head"])
def test_maml_query_logits_adapt_for_test_inner_steps_or_else_for_the_training_steps(inner_params):
    """query_logits (what validation and test evaluate) runs test_inner_steps SGD steps on each task's
    support set when it is set, and inner_steps when it is not."""
    torch.manual_seed(3)
    ep = random_episodes()
    default = MAML(MAMLConfig(inner_steps=1, inner_lr=0.5, inner_params=inner_params), WAY, 1, 28).double()
    four = MAML(
        MAMLConfig(inner_steps=1, inner_lr=0.5, inner_params=inner_params, test_inner_steps=4), WAY, 1, 28
    ).double()
    four.load_state_dict(default.state_dict())
    with torch.no_grad():  # as evaluate() calls it
        default_logits, four_logits = default.query_logits(ep), four.query_logits(ep)
    torch.testing.assert_close(default_logits, manually_adapted_query_logits(default, ep, 1), atol=1e-10, rtol=0)
    torch.testing.assert_close(four_logits, manually_adapted_query_logits(four, ep, 4), atol=1e-10, rtol=0)
    # The step counts are told apart: 4 steps are not 1 step, and 1 step is not the unadapted model.
    assert (four_logits - default_logits).abs().max() > 1e-3
    assert (default_logits - manually_adapted_query_logits(default, ep, 0)).abs().max() > 1e-3


# ---- HyperMAML -------------------------------------------------------------------------------------


def hypermaml(seed=0, **kwargs):
    torch.manual_seed(seed)
    cfg = HyperMAMLConfig(hn_hidden=32, hn_layers=3, **kwargs)
    return HyperMAML(cfg, WAY, SHOT, 1, 28).double()


@pytest.mark.parametrize("aggregation", ["mean", "concat"])
def test_hypermaml_permuting_the_classes_of_an_episode_permutes_its_logits(aggregation):
    """Reorder the class blocks of support and query (each class keeps its label): the query logits
    are the same rows, reordered the same way — the support is grouped by label, not by position."""
    model = hypermaml(aggregation=aggregation)
    ep = random_episodes(tasks=2, seed=4)
    perm = torch.tensor([3, 0, 4, 1, 2])
    s_idx = (perm[:, None] * SHOT + torch.arange(SHOT)).flatten()
    q_idx = (perm[:, None] * QUERY + torch.arange(QUERY)).flatten()
    permuted = Episodes(ep.x_support[:, s_idx], ep.y_support[:, s_idx], ep.x_query[:, q_idx], ep.y_query[:, q_idx])
    with torch.no_grad():
        logits, permuted_logits = model.query_logits(ep), model.query_logits(permuted)
    torch.testing.assert_close(permuted_logits, logits[:, q_idx], atol=1e-10, rtol=0)
    # ... and a wrong grouping would be noticed: shuffling labels across images changes the logits.
    wrong = Episodes(ep.x_support[:, s_idx], ep.y_support, ep.x_query, ep.y_query)
    with torch.no_grad():
        assert not torch.allclose(model.query_logits(wrong), logits)


def test_hypermaml_shot_order_within_a_class_matters_only_for_concat():
    ep = random_episodes(tasks=2, seed=5)
    swap = torch.arange(WAY * SHOT).view(WAY, SHOT).flip(1).flatten()  # reverse the shots of every class
    swapped = Episodes(ep.x_support[:, swap], ep.y_support[:, swap], ep.x_query, ep.y_query)
    for aggregation, invariant in (("mean", True), ("concat", False)):
        model = hypermaml(aggregation=aggregation)
        with torch.no_grad():
            same = torch.allclose(model.query_logits(ep), model.query_logits(swapped), atol=1e-10)
        assert same is invariant, aggregation


def test_no_gradient_flows_through_the_universal_head_predictions():
    model = hypermaml()
    ep = random_episodes(tasks=2, seed=6)
    z_support = model.backbone(ep.x_support)
    d_weight, d_bias = model.head_update(z_support, ep.y_support)
    # The update depends on the head only through the (detached) softmax predictions:
    # so its gradient w.r.t. the head parameters must be exactly zero ...
    g_w, g_b = torch.autograd.grad(
        d_weight.sum() + d_bias.sum(), [model.head.weight, model.head.bias], allow_unused=True
    )
    assert g_w is None and g_b is None
    # ... while the predictions do reach the hypernetwork's output (they are an input, not ignored).
    with torch.no_grad():
        model.head.weight.mul_(3.0)
        d_weight_2, _ = model.head_update(z_support, ep.y_support)
    assert not torch.allclose(d_weight_2, d_weight.detach())


def test_hypermaml_reads_the_universal_heads_softmax_not_an_adapted_heads():
    """The reference fed the hypernetwork the predictions of the previous episode's adapted head
    (stale fast weights). Here the softmax columns of the hypernetwork's input are those of the
    universal head theta_H on the task's own support embeddings, also mid-switch, when a MAML-adapted
    head exists in the same pass."""
    model = hypermaml(warmup=True, warmup_epochs=0, switch_epochs=1, warmup_inner_steps=2, warmup_inner_lr=0.5)
    assert model.cfg.maml_weight(0) == 0.5  # both the MAML step and the hypernetwork take part
    ep = random_episodes(tasks=2, seed=7)
    hypernet_inputs = []
    hook = model.hypernet.register_forward_hook(lambda module, args, out: hypernet_inputs.append(args[0].detach()))
    try:
        model.meta_loss(random_episodes(tasks=2, seed=8), epoch=0)  # another episode first: nothing may carry over
        model.meta_loss(ep, epoch=0)
    finally:
        hook.remove()
    probs_seen = hypernet_inputs[-1][..., FEATURES : FEATURES + WAY]  # [mean embedding | mean softmax | one-hot]

    with torch.no_grad():
        z_support = model.backbone(ep.x_support)
        universal = torch.softmax(z_support @ model.head.weight.T + model.head.bias, -1)
        # The support is class-major, so a class's shots are consecutive rows; mean aggregation.
        expected = universal.view(2, WAY, SHOT, WAY).mean(2)
    torch.testing.assert_close(probs_seen, expected, atol=1e-12, rtol=0)
    # ... and that check can tell the universal head from the task's MAML-adapted head.
    adapted_w, adapted_b = adapt_heads(
        model.head.weight, model.head.bias, z_support, ep.y_support, steps=2, lr=0.5, first_order=True
    )
    adapted = torch.softmax(torch.einsum("tsd,tnd->tsn", z_support, adapted_w) + adapted_b[:, None], -1)
    assert (adapted.view(2, WAY, SHOT, WAY).mean(2) - expected).abs().max() > 1e-3


def test_warmup_and_switch_schedule_weights():
    cfg = HyperMAMLConfig(warmup=True, warmup_epochs=2, switch_epochs=3)
    weights = [cfg.maml_weight(e) for e in range(7)]
    # MAML only for 2 epochs, then (W + S - e) / (S + 1) = 3/4, 2/4, 1/4, then the hypernetwork alone.
    assert weights == [1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert [HyperMAMLConfig(warmup=False).maml_weight(e) for e in range(3)] == [0.0, 0.0, 0.0]
    assert [HyperMAMLConfig(warmup=True, warmup_epochs=0, switch_epochs=0).maml_weight(e) for e in range(2)] == [
        0.0,
        0.0,
    ]


def test_warmup_mixes_maml_and_hypernetwork_updates_with_the_schedule_weight():
    """During the switch the head is theta + p * (MAML step) + (1 - p) * delta, delta added once."""
    model = hypermaml(warmup=True, warmup_epochs=1, switch_epochs=3, warmup_inner_steps=2, warmup_inner_lr=0.2)
    ep = random_episodes(tasks=2, seed=9)
    z_s, z_q = model.backbone(ep.x_support), model.backbone(ep.x_query)
    w, b = model.head.weight, model.head.bias
    d_w, d_b = model.head_update(z_s, ep.y_support)
    # MAML reference for the head: two steps, gradient at the current fast weights each time.
    maml_w, maml_b = [], []
    for t in range(2):
        fw, fb = w, b
        for _ in range(2):
            loss = F.cross_entropy(z_s[t] @ fw.T + fb, ep.y_support[t])
            gw, gb = torch.autograd.grad(loss, [fw, fb], create_graph=True)
            fw, fb = fw - 0.2 * gw, fb - 0.2 * gb
        maml_w.append(fw), maml_b.append(fb)
    mw, mb = torch.stack(maml_w), torch.stack(maml_b)
    for epoch in range(5):
        p = model.cfg.maml_weight(epoch)
        expected_w = w + p * (mw - w) + (1 - p) * d_w
        expected_b = b + p * (mb - b) + (1 - p) * d_b
        expected = torch.einsum("tqd,tnd->tqn", z_q, expected_w) + expected_b[:, None]
        logits, _ = model._query_logits(ep, p)
        torch.testing.assert_close(logits, expected, atol=1e-10, rtol=0)


def test_delta_penalty_is_an_l2_penalty_on_the_hypernetworks_update():
    ep = random_episodes(tasks=2, seed=10)
    plain, penalized = hypermaml(seed=1), hypermaml(seed=1, delta_penalty=0.5)
    # Without a penalty the training loss is the query cross-entropy of the test-time path.
    loss_plain, _ = plain.meta_loss(ep, 0)
    query_logits = plain.query_logits(ep)
    cross_entropy = torch.stack([F.cross_entropy(query_logits[t], ep.y_query[t]) for t in range(2)]).mean()
    torch.testing.assert_close(loss_plain, cross_entropy, atol=1e-12, rtol=0)

    # The penalty's gradient w.r.t. the hypernetwork's output bias is that of lambda * mean over tasks
    # of |delta|^2: 2 * lambda * (sum over classes, mean over tasks) of the update [dW_i | db_i].
    # A penalty on the hypernetwork's weights, a sum over tasks, a wrong power or sign would fail.
    loss_pen, _ = penalized.meta_loss(ep, 0)
    (g_pen,) = torch.autograd.grad(loss_pen, [penalized.hypernet.net[-1].bias])
    (g_plain,) = torch.autograd.grad(loss_plain, [plain.hypernet.net[-1].bias])
    d_w, d_b = penalized.head_update(penalized.backbone(ep.x_support), ep.y_support)
    update = torch.cat([d_w, d_b.unsqueeze(-1)], -1).detach()  # [T, N, D + 1], as the hypernetwork outputs it
    torch.testing.assert_close(g_pen - g_plain, 2 * 0.5 * update.sum(1).mean(0), atol=1e-10, rtol=0)
    assert update.abs().max() > 1e-3  # (a zero update would make the check above empty)

    # A zero update costs nothing: the loss and every gradient are those without a penalty.
    with torch.no_grad():
        for model in (plain, penalized):
            model.hypernet.net[-1].weight.zero_()
            model.hypernet.net[-1].bias.zero_()
    loss_plain, _ = plain.meta_loss(ep, 0)
    loss_pen, _ = penalized.meta_loss(ep, 0)
    assert loss_pen.item() == loss_plain.item()
    g_pen = torch.autograd.grad(loss_pen, list(penalized.parameters()))
    for a, b in zip(g_pen, torch.autograd.grad(loss_plain, list(plain.parameters()))):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_hypermaml_gradients_reach_backbone_head_and_hypernetwork():
    model = hypermaml()
    loss, _ = model.meta_loss(random_episodes(tasks=2, seed=11), 0)
    loss.backward()
    for name, p in model.named_parameters():
        if "conv" in name or "hypernet" in name or name.startswith("head"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("aggregation", ["mean", "concat"])
def test_vectorized_hypermaml_meta_gradient_equals_per_task_loop(aggregation):
    model = hypermaml(aggregation=aggregation)
    ep = random_episodes(seed=12)
    loss, _ = model.meta_loss(ep, epoch=0)
    reference = loop_reference.hypermaml_meta_loss(model, ep)
    torch.testing.assert_close(loss, reference, atol=1e-10, rtol=0)
    vectorized = torch.autograd.grad(loss, list(model.parameters()))
    expected = torch.autograd.grad(reference, list(model.parameters()))
    for (name, _), v, r in zip(model.named_parameters(), vectorized, expected):
        torch.testing.assert_close(v, r, atol=1e-5, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
