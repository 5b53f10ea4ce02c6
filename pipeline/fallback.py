"""Sensitivity fallback: a verified fused int8 target + the sensitivity ranking (sensitivity.py) -> the fewest of
the worst-ranked layers kept float that make the target's gates pass, at most quantization.sensitivity.
max_float_layers of them.

Never silent: every step is a log line, and `result.sensitivity` (manifest, index, report) says which gate failed
and with what value, which layers were kept float, every attempt and the metrics after. The extra layers reach the
quantizers as keep_float entries of a copy of the profile, so they enter the stage configs and the cache keys.
"""
from __future__ import annotations

from .errors import StageError

TOP = 10  # ranking entries recorded (at least max_float_layers)
METHOD = ("int8 simulated at one ONNX node at a time (fake-quantized weights, calibrated Q/DQ activations), "
          "cost = mean(1 - cosine) of the outputs vs fp32 on calibration samples")


def metrics(verification: dict) -> dict:
    """What it does: a verification result -> the numbers the gates look at."""
    cosines = [o["cosine_mean"] for o in verification.get("outputs", {}).values()]
    out = {"agreement": verification.get("agreement"), "cosine_min": min(cosines) if cosines else None}
    if "accuracy_drop_pt" in verification:
        out["accuracy_drop_pt"] = verification["accuracy_drop_pt"]
    return out


def with_keep_float(profile, entries: list[str]):
    """What it does: a target profile + node names -> a copy whose quantization.keep_float also lists them."""
    q = profile.quantization
    keep = list(q.keep_float) + [e for e in entries if e not in q.keep_float]
    return profile.model_copy(update={"quantization": q.model_copy(update={"keep_float": keep})})


def search_sizes(limit: int, passes) -> int | None:
    """What it does: the most layers allowed + passes(n) -> the smallest n that passes: 1, 2, 4, ... up to limit,
    then a bisection between the last failing and the first passing size; None when passes(limit) fails too or
    passes() returns None (an attempt that could not be built ends the search)."""
    low, n = 0, 1
    while True:
        ok = passes(n)
        if ok is None:
            return None
        if ok:
            break
        if n >= limit:
            return None
        low, n = n, min(2 * n, limit)
    high = n
    while high - low > 1:
        mid = (low + high) // 2
        ok = passes(mid)
        if ok is None:
            break
        if ok:
            high = mid
        else:
            low = mid
    return high


def sensitivity_fallback(result, rank, build, log) -> None:
    """What it does: a fused target after its chain ran -> result.sensitivity (ranking, gates before, attempts) and,
    when the gates failed, result's model/lineage/verification/reasons from the smallest passing attempt (or the
    last one, still failing, with its reasons).

    The runner passes what it does itself: rank(fp32 ONNX artifact) -> the sensitivity stage's artifact;
    build(profile, label) -> a new target result (lineage, model, verification, reasons) built with that profile,
    raising StageError when it cannot be built; log(line)."""
    tp = result.plan
    sens = tp.profile.quantization.sensitivity
    fp32 = next(a for a in result.lineage if a.stage == "export_onnx")
    ranking = rank(fp32)
    rows = ranking.meta["ranking"]
    record = {"settings": sens.model_dump(), "method": METHOD, "candidates": ranking.meta["candidates"],
              "samples": ranking.meta["samples"], "seconds": ranking.meta["seconds"],
              "ranking": rows[: max(TOP, sens.max_float_layers)],
              "all_candidates_simulated": ranking.meta["all_candidates"],
              "before": {"passed": not result.reasons, "reasons": list(result.reasons),
                         **metrics(result.verification.meta)},
              "attempts": [], "auto_keep_float": [], "after": None, "passed": not result.reasons}
    result.sensitivity = record
    worst = ", ".join(f"{r['node']} ({r['cost']:.3g})" for r in rows[:3]) or "no candidate"
    log(f"  sensitivity    {tp.name:<22} {ranking.meta['candidates']} nodes ranked in "
               f"{ranking.meta['seconds']:.1f}s; worst: {worst}")
    if not result.reasons:
        return
    limit = min(sens.max_float_layers, len(rows))
    log(f"  sensitivity    {tp.name:<22} gates failed ({'; '.join(result.reasons)}); trying up to {limit} "
               "worst layers in float")
    tried: dict[int, object] = {}

    def passes(n: int) -> bool | None:
        entries = [r["node"] for r in rows[:n]]
        try:
            attempt = build(with_keep_float(tp.profile, entries), f"{tp.name}+{n}float")
        except StageError as err:
            record["attempts"].append({"layers": n, "keep_float": entries, "passed": False, "error": str(err)})
            log(f"  sensitivity    {tp.name:<22} {n} layer(s) float: could not build: {err}")
            return None
        tried[n] = attempt
        record["attempts"].append({"layers": n, "keep_float": entries, "passed": not attempt.reasons,
                                   "reasons": list(attempt.reasons), **metrics(attempt.verification.meta)})
        log(f"  sensitivity    {tp.name:<22} {n} layer(s) float: "
                   f"{'passed' if not attempt.reasons else 'failed (' + '; '.join(attempt.reasons) + ')'}")
        return not attempt.reasons

    chosen = search_sizes(limit, passes) if limit else None
    before = "; ".join(result.reasons)
    if chosen is None and tried:
        chosen = max(tried)  # none passed: keep the most float attempt, failing with its reasons
    if chosen is None:
        last = record["attempts"][-1] if record["attempts"] else None
        why = (f"could not build with {last['layers']} layer(s) float: {last['error']}" if last
               else "no candidate layers")
        result.reasons.append(f"sensitivity fallback: {why}")
        return
    pick = tried[chosen]
    result.lineage, result.model, result.verification = pick.lineage, pick.model, pick.verification
    result.reasons = list(pick.reasons)
    record.update(auto_keep_float=[r["node"] for r in rows[:chosen]], passed=not pick.reasons,
                  after=metrics(pick.verification.meta))
    layers = ", ".join(record["auto_keep_float"])
    if pick.reasons:
        result.reasons.append(f"sensitivity fallback: {chosen} worst layer(s) kept float ({layers}) did not pass "
                              f"either; before: {before}")
    log(f"  sensitivity    {tp.name:<22} kept {chosen} layer(s) float automatically: {layers} -> "
               f"{'passed' if not pick.reasons else 'still failing'}")
