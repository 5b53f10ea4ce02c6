"""Structured pruning: whole output channels of convolutions, hidden units of MLPs and attention heads removed, so
parameters, MACs and file size fall in every exported format (unlike magnitude pruning's zeros).

Two parts:
- channels and hidden units: torch-pruning's dependency graph (traced on an example input) finds every layer a
  channel couples with (the next layer's inputs, BatchNorm/LayerNorm widths, depthwise groups, residual adds,
  concat offsets) and removes the channel from all of them; importance L1, L2 or Taylor (|w · dL/dw|, with the
  model's own top-1 as the label, so no labels are needed) summed over the coupled weights; one ratio per group,
  or one global ranking with a per-layer floor.
- attention heads: a module that declares `edgepipe_attention()` (where q/k/v rows and the output projection's
  columns of each head live) loses whole heads, ranked by the same criterion over those rows and columns; its
  `edgepipe_resync()` then recomputes the head count. q/k/v rows are never channel roots (each kept head keeps
  its width); the residual stream (embeddings, every LayerNorm, q/k/v inputs, attention and FFN output rows) is
  pruned as one group like any other, unless it reaches a model output (MiniLM's pooled embedding is its residual
  stream: kept).

Model outputs keep their shape: a group whose channels reach a model output is never pruned, and a recipe that would
still change an output (or break the forward) is a ConfigError, found by the dry run before any stage.
`shapes_changed` / `resize_to` record and replay the new shapes, so a compressed artifact reloads (load.py).
"""
from __future__ import annotations

import warnings
from fnmatch import fnmatchcase

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from . import as_outputs, select_layers

IMPORTANCE = ("l1", "l2", "taylor")


def _candidates(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def attention_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """What it does: a model -> (name, module) of every module that declares its attention heads."""
    return [(n, m) for n, m in model.named_modules() if callable(getattr(m, "edgepipe_attention", None))]


def output_layers(model: nn.Module, example: tuple) -> set[str]:
    """What it does: a model + example inputs -> names of the leaf layers whose output tensor is a model output
    (pruning their channels would change the model's output shape)."""
    seen: dict[int, str] = {}
    hooks = [m.register_forward_hook(lambda mod, _i, o, name=n: seen.__setitem__(id(o), name))
             for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    try:
        with torch.no_grad():
            outs = as_outputs(model(*example))
    finally:
        for h in hooks:
            h.remove()
    return {seen[id(o)] for o in outs if id(o) in seen}


def _self_loss(outs: list[torch.Tensor]) -> torch.Tensor:
    """Taylor importance without labels: cross-entropy against the model's own top-1 for every [N, C] output,
    the squared norm of any other float output."""
    loss = torch.zeros(())
    for o in outs:
        if not o.is_floating_point():
            continue
        if o.dim() == 2 and o.shape[1] > 1:
            loss = loss + F.cross_entropy(o, o.detach().argmax(1))
        else:
            loss = loss + o.pow(2).mean()
    return loss


def _taylor_grads(model: nn.Module, data: list[tuple]) -> None:
    """What it does: calibration batches -> every weight's .grad of the label-free Taylor loss (summed)."""
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for batch in data:
            _self_loss(as_outputs(model(*batch))).backward()


def _head_scores(decl: dict, importance: str) -> torch.Tensor:
    """What it does: an attention declaration -> one importance per head (rows of q/k/v + columns of the out
    projection that belong to it)."""
    hd, heads = decl["head_dim"], decl["heads"]
    scores = torch.zeros(heads, dtype=torch.float64)

    def part(w: torch.Tensor) -> torch.Tensor:
        g = w.grad if importance == "taylor" else None
        if importance == "taylor":
            if g is None:
                raise ConfigError("structured.importance taylor needs calibration data (none reached the step)")
            return (w.detach() * g).abs()
        return w.detach().abs() if importance == "l1" else w.detach() ** 2

    for layer, offset in decl["rows"]:
        pw = part(layer.weight)
        for h in range(heads):
            scores[h] += float(pw[offset + h * hd: offset + (h + 1) * hd].sum())
    pw = part(decl["out"].weight)
    for h in range(heads):
        scores[h] += float(pw[:, h * hd:(h + 1) * hd].sum())
    return scores


def _take(layer: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    """Keep only `rows` (outputs) / `cols` (inputs) of a Linear, in place."""
    w = layer.weight.detach()
    if rows is not None:
        w = w[rows]
        if layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias.detach()[rows].clone())
        layer.out_features = len(rows)
    if cols is not None:
        w = w[:, cols]
        layer.in_features = len(cols)
    layer.weight = nn.Parameter(w.clone())


def prune_heads(decl: dict, keep: list[int]) -> None:
    """What it does: an attention declaration + the heads to keep -> q/k/v rows and out-projection columns of the
    other heads removed (fused q/k/v layers keep their q | k | v block order)."""
    hd, heads = decl["head_dim"], decl["heads"]
    by_layer: dict[int, tuple[nn.Linear, list[int]]] = {}
    for layer, offset in decl["rows"]:
        entry = by_layer.setdefault(id(layer), (layer, []))
        entry[1].append(offset)
    for layer, offsets in by_layer.values():
        drop = {offset + h * hd + i for offset in offsets for h in range(heads) if h not in keep for i in range(hd)}
        rows = torch.tensor([r for r in range(layer.out_features) if r not in drop], dtype=torch.long)
        _take(layer, rows=rows)
    cols = torch.tensor([h * hd + i for h in sorted(keep) for i in range(hd)], dtype=torch.long)
    _take(decl["out"], cols=cols)


def structured_prune(model: nn.Module, example: tuple, ratio: float = 0.0, scope: str = "layer",
                     importance: str = "l1", floor: float = 0.1, ratios: dict[str, float] | None = None,
                     heads: float = 0.0, layers: list[str] | None = None, skip: list[str] = (),
                     round_to: int | None = None, data: list[tuple] | None = None) -> dict:
    """What it does: a model + example inputs + settings -> the model with channels, hidden units and heads
    removed in place; a report (per layer: shape before/after; heads kept per attention block).

    ratio: share of each coupled channel group removed (scope layer), or the global share ranked across groups
    (scope global, no layer below `floor` of its channels); ratios: fnmatch pattern -> ratio for those layers;
    heads: share of heads removed per attention block; data: batches for Taylor importance.
    ConfigError before any change for a ratio outside [0, 1), a floor outside (0, 1], a share that would remove
    every head of a block, a pattern that matches no layer, or Taylor without data."""
    import torch_pruning as tp

    ratios = dict(ratios or {})
    for key, value in [("ratio", ratio), ("heads", heads)] + [(f"ratios['{k}']", v) for k, v in ratios.items()]:
        if not 0 <= value < 1:
            raise ConfigError(f"structured.{key} must be in [0, 1) (1 would remove every channel), got {value}")
    if not 0 < floor <= 1:
        raise ConfigError(f"structured.floor must be in (0, 1], got {floor}")
    if importance not in IMPORTANCE:
        raise ConfigError(f"structured.importance must be one of {', '.join(IMPORTANCE)}, got '{importance}'")
    if scope not in ("global", "layer"):
        raise ConfigError(f"structured.scope must be 'global' or 'layer', got '{scope}'")
    if importance == "taylor" and not data:
        raise ConfigError("structured.importance taylor needs calibration data")
    names = _candidates(model)
    chosen = set(select_layers(names, layers, list(skip), "structured"))
    for pattern in ratios:
        if not any(fnmatchcase(n, pattern) for n in names):
            raise ConfigError(f"structured.ratios: layer pattern '{pattern}' matches no layer")
    blocks = attention_blocks(model)
    for bname, block in blocks:
        n_heads = block.edgepipe_attention()["heads"]
        if n_heads - int(heads * n_heads) < 1:
            raise ConfigError(f"structured.heads {heads} would remove every head of '{bname}' ({n_heads} heads)")
    modules = dict(model.named_modules())
    with torch.no_grad():
        before_out = [tuple(o.shape) for o in as_outputs(model(*example))]
    before = {n: tuple(modules[n].weight.shape) for n in names}

    protected = output_layers(model, example)
    for pattern in ratios:
        hit = sorted(n for n in protected if fnmatchcase(n, pattern))
        if hit:
            raise ConfigError(f"structured.ratios '{pattern}': layer '{hit[0]}' produces a model output; removing its "
                              "channels would change the output shape")
    if importance == "taylor":
        _taylor_grads(model, data)

    head_report = {}
    name_of = {id(m): n for n, m in modules.items()}
    if heads > 0:
        for bname, block in blocks:
            decl = block.edgepipe_attention()
            if any(name_of[id(layer)] not in chosen for layer in [x for x, _ in decl["rows"]] + [decl["out"]]):
                continue  # a block is head-pruned only when layers/skip choose all its projections
            n_remove = int(heads * decl["heads"])
            if n_remove == 0:
                continue
            order = torch.argsort(_head_scores(decl, importance), descending=True)
            keep = sorted(int(h) for h in order[: decl["heads"] - n_remove])
            prune_heads(decl, keep)
            head_report[bname] = {"heads_before": decl["heads"], "heads_kept": keep}
        for m in model.modules():
            if callable(getattr(m, "edgepipe_resync", None)):
                m.edgepipe_resync()

    if importance == "taylor" and head_report:  # heads removed: fresh gradients for the resized layers
        _taylor_grads(model, data)
    # q/k/v rows are never channel roots (their widths are heads, handled above); the output projection may lose
    # rows with the residual stream it writes to (LayerNorm widths follow), never its head columns.
    attn = {id(layer) for _, b in blocks for d in [b.edgepipe_attention()] for layer, _ in d["rows"]}
    ignored = [m for n, m in model.named_modules() if n in names
               and (n not in chosen or n in protected or id(m) in attn)]
    ratio_dict = {modules[n]: min(v, 1 - floor) for pattern, v in ratios.items() for n in names
                  if fnmatchcase(n, pattern) and n in chosen}
    crit = {"l1": lambda: tp.importance.MagnitudeImportance(p=1), "l2": lambda: tp.importance.MagnitudeImportance(p=2),
            "taylor": lambda: tp.importance.TaylorImportance()}[importance]()
    with warnings.catch_warnings():  # torch-pruning's notes on unwrapped parameters (positions) are expected here
        warnings.simplefilter("ignore", UserWarning)
        _channel_prune(model, example, crit, ignored, ratio, ratio_dict, scope, floor, round_to)
    model.zero_grad(set_to_none=True)
    for m in model.modules():
        if callable(getattr(m, "edgepipe_resync", None)):
            m.edgepipe_resync()
    try:
        with torch.no_grad():
            after_out = [tuple(o.shape) for o in as_outputs(model(*example))]
    except Exception as err:
        raise ConfigError(f"structured pruning breaks the model's forward ({type(err).__name__}: {err}); "
                          "skip the layer that feeds a fixed-size table or reshape") from err
    if after_out != before_out:
        raise ConfigError(f"structured pruning would change the model's output shapes {before_out} -> {after_out}; "
                          "add the layers that produce them to skip")
    modules = dict(model.named_modules())
    rows = [{"name": n, "shape_before": list(before[n]), "shape": list(modules[n].weight.shape)}
            for n in names if n in modules and tuple(modules[n].weight.shape) != before[n]]
    return {"layers": rows, "heads": head_report}


def _channel_prune(model, example, crit, ignored, ratio, ratio_dict, scope, floor, round_to) -> None:
    """What it does: torch-pruning run per group (a global ranking first becomes per-group ratios)."""
    import torch_pruning as tp

    if not (ratio > 0 or ratio_dict):
        return  # heads only
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        ignored = ignored + _output_coupled(graph, ignored)
        if scope == "global" and ratio > 0:
            ratio_dict = _global_ratios(graph, crit, ignored, ratio, floor) | ratio_dict
            ratio = 0.0
        if ratio > 0 or ratio_dict:
            pruner = tp.pruner.MetaPruner(model, example, importance=crit, pruning_ratio=min(ratio, 1 - floor),
                                          pruning_ratio_dict=ratio_dict or None, global_pruning=False,
                                          max_pruning_ratio=1 - floor, ignored_layers=ignored, round_to=round_to)
            pruner.step()
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"structured pruning cannot follow this model's graph ({type(err).__name__}: {err})"
                          ) from err


def _output_coupled(graph, ignored: list) -> list[nn.Module]:
    """What it does: a dependency graph -> the layers whose channels reach a model output (e.g. a transformer's
    residual stream that is mean-pooled into the embedding): pruning them would change an output."""
    import torch_pruning as tp

    extra = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv1d, nn.Conv2d, nn.Linear)):
        if any(isinstance(dep.target.module, tp.ops._OutputOp) for dep, _ in group):
            extra += [dep.target.module for dep, _ in group if isinstance(dep.target.module, nn.Module)
                      and graph.is_out_channel_pruning_fn(dep.handler)]
    return extra


def _global_ratios(graph, crit, ignored: list, ratio: float, floor: float) -> dict:
    """What it does: one global ranking over a dependency graph's groups -> a ratio per group root. Each group's
    channel importances are divided by their mean (groups of different sizes and scales compare by relative
    importance), the `ratio` share with the lowest scores over all groups is marked, and each group loses its
    marked share, capped at 1 - floor."""
    scored = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv1d, nn.Conv2d, nn.Linear)):
        imp = crit(group)
        if imp is None or len(imp) < 2:
            continue
        scored.append((group[0][0].target.module, (imp / imp.mean().clamp_min(1e-12)).detach().float()))
    if not scored:
        return {}
    flat = torch.cat([s for _, s in scored])
    k = int(ratio * len(flat))
    if k == 0:
        return {}
    threshold = torch.kthvalue(flat, k).values
    return {root: min(float((s <= threshold).float().mean()), 1 - floor) for root, s in scored}


def shapes_of(model: nn.Module) -> dict[str, list[int]]:
    """What it does: a model -> {parameter or buffer name: shape}."""
    return {n: list(t.shape) for n, t in list(model.named_parameters()) + list(model.named_buffers())}


def shapes_changed(before: dict[str, list[int]], model: nn.Module) -> dict[str, list[int]]:
    """What it does: shapes before a step + the model after -> the entries whose shape changed."""
    return {n: s for n, s in shapes_of(model).items() if before.get(n) != s}


def resize_to(model: nn.Module, shapes: dict[str, list[int]]) -> None:
    """What it does: a freshly built model + recorded shapes -> its tensors and layer attributes resized to them
    (weights are placeholders until the compressed state dict is loaded), then every `edgepipe_resync()` hook."""
    for mname, m in model.named_modules():
        old_in = getattr(m, "in_channels", None)
        changed = False
        for pname, p in list(m.named_parameters(recurse=False)):
            want = shapes.get(f"{mname}.{pname}" if mname else pname)
            if want is not None and list(p.shape) != want:
                setattr(m, pname, nn.Parameter(torch.zeros(want, dtype=p.dtype), requires_grad=p.requires_grad))
                changed = True
        for bname, b in list(m.named_buffers(recurse=False)):
            want = shapes.get(f"{mname}.{bname}" if mname else bname)
            if want is not None and b is not None and list(b.shape) != want:
                m._buffers[bname] = torch.zeros(want, dtype=b.dtype)
                changed = True
        if not changed:
            continue
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            depthwise = m.groups > 1 and m.groups == old_in == m.out_channels
            m.out_channels = m.weight.shape[0]
            if depthwise:
                m.groups = m.in_channels = m.weight.shape[0]
            else:
                m.in_channels = m.weight.shape[1] * m.groups
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.num_features = m.running_mean.shape[0] if m.running_mean is not None else m.weight.shape[0]
        elif isinstance(m, nn.LayerNorm):
            m.normalized_shape = tuple(m.weight.shape)
        elif isinstance(m, nn.Embedding):
            m.num_embeddings, m.embedding_dim = m.weight.shape
    for m in model.modules():
        if callable(getattr(m, "edgepipe_resync", None)):
            m.edgepipe_resync()


def count_macs(model: nn.Module, example: tuple) -> int:
    """What it does: a model + example inputs -> multiply-accumulates of its Conv/Linear layers for one forward
    (torch-pruning's op counter; attention matmuls and elementwise ops not included)."""
    import torch_pruning as tp

    macs, _ = tp.utils.count_ops_and_params(model, example)
    return int(macs)
