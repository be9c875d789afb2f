"""Plain per-task reference implementations: one task at a time, torch.autograd.grad, own Conv4 code.

Used by the correctness tests (vectorized == reference) and by benchmarks/throughput.py (speed of the
vectorized learners against this loop), so it lives in the package that both import. It shares
parameters with our learners by name, not code.
"""

import torch
import torch.nn.functional as F


def conv4_features(p, x):
    """Conv4 on one task's images [B, C, H, W] -> [B, 64]; parameters by name."""
    h = x
    for i in range(4):
        h = F.conv2d(h, p[f"backbone.blocks.{i}.conv.weight"], padding=1)
        h = F.batch_norm(
            h, None, None, p[f"backbone.blocks.{i}.bn.weight"], p[f"backbone.blocks.{i}.bn.bias"], training=True
        )
        h = F.max_pool2d(F.relu(h), 2)
    return h.flatten(1)


def maml_forward(p, x):
    return conv4_features(p, x) @ p["head.weight"].T + p["head.bias"]


def maml_meta_loss(model, cfg, ep):
    """Mean over tasks of the query loss after cfg.inner_steps SGD steps, task by task."""
    params = dict(model.named_parameters())
    adapted = [k for k in params if cfg.inner_params == "all" or k.startswith("head.")]
    total = 0
    for t in range(ep.tasks):
        fast = dict(params)
        for _ in range(cfg.inner_steps):
            loss = F.cross_entropy(maml_forward(fast, ep.x_support[t]), ep.y_support[t])
            grads = torch.autograd.grad(loss, [fast[k] for k in adapted], create_graph=not cfg.first_order)
            fast.update({k: fast[k] - cfg.inner_lr * g for k, g in zip(adapted, grads)})
        total = total + F.cross_entropy(maml_forward(fast, ep.x_query[t]), ep.y_query[t])
    return total / ep.tasks


def hypermaml_meta_loss(model, ep):
    """Pure-hypernetwork HyperMAML loss (no warm-up), task by task; support is class-major."""
    params = dict(model.named_parameters())
    weight, bias = params["head.weight"], params["head.bias"]
    way = weight.shape[0]
    total = 0
    for t in range(ep.tasks):
        z_s = conv4_features(params, ep.x_support[t])
        z_q = conv4_features(params, ep.x_query[t])
        probs = torch.softmax(z_s.detach() @ weight.detach().T + bias.detach(), -1)
        rows = torch.cat([z_s, probs, F.one_hot(ep.y_support[t], way).to(z_s.dtype)], -1).view(
            way, -1, z_s.shape[1] + 2 * way
        )
        rows = rows.mean(1) if model.cfg.aggregation == "mean" else rows.flatten(1)
        delta = model.hypernet(rows)
        logits = z_q @ (weight + delta[:, :-1]).T + bias + delta[:, -1]
        total = total + F.cross_entropy(logits, ep.y_query[t])
    return total / ep.tasks
