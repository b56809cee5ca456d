"""``ttt bench``: hearing benchmarks on speech voiced by the Piper teacher, reported as medians.

``listen``: twelve everyday sentences with 1.5 s of silence between them, heard by ``ttt listen``
as fast as possible: end-of-turn count, WER, end-of-turn latency, real-time factor; plus a sentence
broken by a pause inside an unfinished phrase, which must stay one turn.
``turn``: the end-of-turn scorers side by side on held-out pause cases and complete turns (false
cut-offs, latency, a curve over wait policies), and each scorer alone (scores and time per call).
``real``: real human speech (the Asterisk prompts): WER against whisper offline, turns, latency, cut-offs.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.events import EndOfTurn, HearingEvent, TurnResumed
from agent.listen import Listener
from agent.settings import Settings
from training.wer import wer_gap, word_error_rate

# Everyday requests and remarks, none taken from the shared eval set (they stay unseen there).
BENCH_SENTENCES = [
    "Could you remind me to call my sister at seven tonight?",
    "The dishwasher has been making a strange noise since Monday.",
    "I parked the car on the third floor of the garage.",
    "What is the weather going to be like this weekend?",
    "We ran out of milk, so I will stop at the store on the way home.",
    "Please add tomatoes and onions to the shopping list.",
    "My neighbor's dog keeps barking every night around midnight.",
    "How long does it take to walk to the post office from here?",
    "I am thinking about learning to play the piano this year.",
    "Can you turn the heating down a little in the bedroom?",
    "Last summer we drove along the coast for almost two weeks.",
    "Send a message to Anna saying that I will be late.",
]
# One turn with a pause inside an unfinished phrase: it must not be cut in two.
PAUSED_TURN = ("I would like to book a table for", "four people tomorrow evening.")
PAUSE_S = 0.8  # inside the phrase (the must-show asks for 0.7 to 1.0 s)
# Complete requests vs the same kind of words cut mid-phrase, for the turn benchmark.
COMPLETE_PHRASES = [
    "What is the weather like today?",
    "Please set an alarm for seven in the morning.",
    "Can you turn off the lights in the kitchen?",
    "Tell me a joke about cats.",
    "Play some relaxing music.",
    "I need to buy some bread and milk.",
]
UNFINISHED_PHRASES = [
    "I would like to book a table for",
    "Can you tell me how to",
    "The thing is, I was wondering if",
    "Set a timer for",
    "What is the",
    "Remind me to call my",
]


@dataclass
class ListenResult:
    """What one listen pass over a file gave."""

    events: list[HearingEvent]  # every event, in order
    wall_s: float  # wall time of the pass (models already loaded)
    audio_s: float  # duration of the file
    turns: list[EndOfTurn] = field(default_factory=list)  # the turns taken: end_of_turn events not resumed
    resumed: list[EndOfTurn] = field(default_factory=list)  # end_of_turn events the user's speech then resumed

    @property
    def rtf(self) -> float:
        """Real-time factor: wall time / audio time."""
        return self.wall_s / self.audio_s


async def _listen_file(listener: Listener, path: str | Path) -> ListenResult:
    from audio_io.sources import FileSource

    source = FileSource(path, realtime=False)
    events: list[HearingEvent] = []
    started = time.perf_counter()
    async for event in listener.events(source):
        events.append(event)
    wall = time.perf_counter() - started
    ends = [e for e in events if isinstance(e, EndOfTurn)]
    resumed_at = {e.ended_at for e in events if isinstance(e, TurnResumed)}
    turns = [e for e in ends if e.t not in resumed_at]
    return ListenResult(events, wall, source.duration, turns, [e for e in ends if e.t in resumed_at])


def listen_file(listener: Listener, path: str | Path) -> ListenResult:
    """Hear ``path`` as fast as possible with a loaded listener."""
    return asyncio.run(_listen_file(listener, path))


def turn_latencies(turns: list[EndOfTurn], spans: list[tuple[float, float]]) -> list[float | None]:
    """For each end_of_turn, its time minus the end of the speech it closes: the last span ended before it.

    None for a turn that closes no span (it came before the speech ended: a premature end of turn).
    """
    latencies: list[float | None] = []
    for turn in turns:
        ends = [end for _, end in spans if end <= turn.t]
        latencies.append(turn.t - ends[-1] if ends else None)
    return latencies


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(1000 * seconds)


def bench_listen(settings: Settings, repeats: int = 3, out: Path | None = Path("benchmarks/listen.md")) -> dict:
    """Run the listen benchmark; print a table and a JSON line; optionally write ``out``."""
    from training.teacher import write_conversation

    with tempfile.TemporaryDirectory(prefix="ttt-bench-") as tmp:
        twelve = Path(tmp) / "twelve.wav"
        spans = write_conversation(BENCH_SENTENCES, twelve)
        paused = Path(tmp) / "paused.wav"
        pause_spans = write_conversation([PAUSED_TURN], paused, pause_s=PAUSE_S)
        started = time.perf_counter()
        listener = Listener.from_settings(settings)
        load_s = time.perf_counter() - started
        runs = []
        try:
            listen_file(listener, paused)  # warm-up (first calls allocate)
            for _ in range(max(1, repeats)):
                result = listen_file(listener, twelve)
                latencies = [x for x in turn_latencies(result.turns, spans) if x is not None]
                runs.append(
                    {
                        "turns": len(result.turns),
                        "resumed": len(result.resumed),
                        "wer": word_error_rate(BENCH_SENTENCES, [t.text for t in result.turns]),
                        "latency_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
                        "latency_max_ms": 1000 * max(latencies) if latencies else float("nan"),
                        "rtf": result.rtf,
                        "texts": [t.text for t in result.turns],
                    }
                )
            pause_result = listen_file(listener, paused)
        finally:
            listener.close()
    summary = {
        "bench": "listen",
        "repeats": len(runs),
        "turns": statistics.median(r["turns"] for r in runs),
        "resumed": statistics.median(r["resumed"] for r in runs),  # ends of turn the speech that followed took back
        "wer": statistics.median(r["wer"] for r in runs),
        "latency_ms": statistics.median(r["latency_ms"] for r in runs),
        "latency_max_ms": statistics.median(r["latency_max_ms"] for r in runs),
        "rtf": statistics.median(r["rtf"] for r in runs),
        "paused_turns": len(pause_result.turns),
        "paused_text": [t.text for t in pause_result.turns],
        "paused_latency_ms": _ms(turn_latencies(pause_result.turns, pause_spans)[-1]) if pause_result.turns else None,
        "load_s": round(load_s, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the machine inflates latency
    }
    rows = [
        ("turns taken (12 sentences)", f"{summary['turns']:.0f}", "= 12"),
        ("ends of turn resumed by the speech after them", f"{summary['resumed']:.0f}", ""),
        ("WER", f"{100 * summary['wer']:.1f}%", "<= 8%"),
        ("median end-of-turn latency", f"{summary['latency_ms']:.0f} ms", "<= 500 ms"),
        ("max end-of-turn latency", f"{summary['latency_max_ms']:.0f} ms", ""),
        ("real-time factor (loading excluded)", f"{summary['rtf']:.3f}", "<= 0.5"),
        (f"turns, sentence with a {PAUSE_S * 1000:.0f} ms pause", f"{summary['paused_turns']}", "= 1"),
    ]
    table = ["| metric | median | goal |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    print("\n".join(table))
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}))
    if out is not None:
        _write_report(out, summary, table, runs)
    return summary


def _write_report(out: Path, summary: dict, table: list[str], runs: list[dict]) -> None:
    lines = [
        "# Benchmark: listen (VAD + streaming whisper + LLM end of turn)",
        "",
        f"`ttt bench listen --repeats {summary['repeats']}` on {os.cpu_count()} CPU cores, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; speech voiced by the Piper teacher "
        "(joe-medium), 12 sentences with 1.5 s of silence between them, heard as fast as possible "
        "(critical-path compute added to the event times). Medians over the repeats.",
        "",
        *table,
        "",
        f"Model loading (not in the RTF): {summary['load_s']} s. Load average when it finished: "
        f"{summary['load_avg_1m']} (the machine is shared; latency grows with it). Transcripts of the last run:",
        "",
        *[f"{i + 1}. {text}" for i, text in enumerate(runs[-1]["texts"])],
        "",
        f"Paused sentence ({' ... '.join(PAUSED_TURN)}): {summary['paused_text']}",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = out.read_text() if out.exists() else ""
    marker = "\n## Notes"
    notes = existing[existing.index(marker) :] if marker in existing else ""
    out.write_text("\n".join(lines) + notes)


def bench_turn(
    settings: Settings,
    repeats: int = 3,
    out: Path | None = Path("benchmarks/turn.md"),
    cases: int = 0,
    offline: bool = False,
) -> dict:
    """The end-of-turn scorers side by side, on held-out sets and alone.

    Held-out pause cases and complete turns heard by the listener (false cut-offs, latency, a
    cut-offs-vs-latency PNG), then each scorer alone (its scores on complete vs unfinished
    phrases, and its time per call). ``cases`` > 0 uses the first N of each held-out set. ``offline``
    hears each case from its parts (agent/turn_eval.py ``score_parts``) instead of through the listener:
    much less compute, and its latencies are CPU-time bounds, for a machine too busy to time the listener.
    """
    import torch

    sets = _bench_turn_parts(settings, out, cases) if offline else _bench_turn_sets(settings, out, cases)
    summary: dict = {"bench": "turn", "offline": offline, **sets}
    summary.update(_bench_turn_scores(settings, repeats))
    summary["torch_threads"] = torch.get_num_threads()
    summary["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(f"load average {summary['load_avg_1m']} on {os.cpu_count()} cores")
    print(json.dumps(summary))
    if out is not None:
        _write_turn_report(out, summary)
    return summary


SCORERS = ("zero_shot", "trained")  # the turn.scorer values the turn benchmark compares


def _bench_turn_sets(settings: Settings, out: Path | None, cases: int = 0) -> dict:
    """Each scorer, with its own wait policy, on the held-out sets voiced by the teacher."""
    from agent.turn_eval import curve, hear_sets, policy_table, summarize
    from training.turn_data import read_pause_cases, read_turns

    pauses, completes = read_pause_cases(), read_turns()
    if cases > 0:
        pauses, completes = pauses[:cases], completes[:cases]
    results: dict = {}
    curves, marks = {}, {}
    for scorer in SCORERS:
        chosen = copy.deepcopy(settings)
        chosen.turn.scorer = scorer
        listener = Listener.from_settings(chosen)
        try:
            pause_results, complete_results = hear_sets(chosen, pauses, completes, listener)
            policy = listener.turns
        finally:
            listener.close()
        heard = summarize(pause_results, complete_results)
        heard["policy"] = {
            "min_silence_ms": policy.min_silence_ms,
            "max_silence_ms": policy.max_silence_ms,
            "eot_threshold": policy.eot_threshold,
            "eot_hold": policy.eot_hold,
        }
        heard["cut_off_fragments"] = [
            {"fragment": f, "pause_s": p, "heard": c.texts}
            for (f, _), c, p in zip(pauses, pause_results, _pauses(len(pauses)), strict=True)
            if c.cut_off
        ]
        heard["slow_turns"] = [
            {"turn": t, "latency_ms": _ms(c.latency)}
            for t, c in zip(completes, complete_results, strict=True)
            if c.latency is None or c.latency > 0.4
        ]
        results[scorer] = heard
        heard["policies"] = policy_table(pause_results, complete_results)
        curves[scorer] = curve(heard["policies"])
        marks[scorer] = (heard["latency_p50_ms"], heard["false_cutoff_rate"])
        print(
            f"{scorer:10s} false cut-offs {heard['false_cutoffs']}/{heard['pause_cases']}, complete turns "
            f"{heard['turns_found']}/{heard['complete_turns']} found, latency p50 {heard['latency_p50_ms']} ms, "
            f"p90 {heard['latency_p90_ms']} ms (policy {heard['policy']})"
        )
    if out is not None:
        results["curve_png"] = _plot_turn_curves(out, curves, marks)
    return results


def _plot_turn_curves(out: Path, curves: dict, marks: dict) -> str:
    """The cut-offs-vs-latency PNG beside the report ``out``; its path."""
    from agent.turn_eval import plot_curves

    png = out.with_name("turn_curve.png")
    plot_curves(curves, png, marks)
    return str(png)


def _scorers(settings: Settings) -> dict:
    """The end-of-turn scorers of SCORERS with their wait functions, as the listener would build them."""
    from agent.turn_detector import build_turn_detector
    from model.backbone import load_backbone

    backbone = load_backbone(settings.assets.llm, settings.assets.cache_dir, settings.device)
    detectors = {}
    for scorer in SCORERS:
        turn = copy.deepcopy(settings.turn)
        turn.scorer = scorer
        detectors[scorer] = build_turn_detector(turn, backbone)
    return detectors


def _policy(detector) -> dict:  # noqa: ANN001 - agent.turn_detector.TurnDetector
    names = ("min_silence_ms", "max_silence_ms", "eot_threshold", "eot_hold")
    return {name: getattr(detector, name) for name in names}


def _bench_turn_parts(settings: Settings, out: Path | None, cases: int = 0) -> dict:
    """The held-out sets heard from their parts (voiced, decoded, scored once per scorer) and replayed."""
    from agent.asr import WhisperAsr
    from agent.turn_eval import curve, pause_lengths, policy_table, replay, score_parts, summarize
    from training.teacher import teacher_voice, voiced_16k
    from training.turn_data import read_pause_cases, read_turns

    pauses, completes = read_pause_cases(), read_turns()
    if cases > 0:
        pauses, completes = pauses[:cases], completes[:cases]
    voice = teacher_voice(settings.assets.piper_voice, steady=True)

    def voiced(text: str) -> np.ndarray:
        return voiced_16k(voice, text)

    asr = WhisperAsr(settings.asr, settings.assets.whisper)
    detectors = _scorers(settings)
    scorers = {name: d.eot_model for name, d in detectors.items()}
    gaps = pause_lengths(len(pauses))
    pause_parts = score_parts([[voiced(f), voiced(c)] for f, c in pauses], [[g] for g in gaps], asr, scorers)
    complete_parts = score_parts([[voiced(t)] for t in completes], [[] for _ in completes], asr, scorers)
    results: dict = {}
    curves, marks = {}, {}
    for scorer, detector in detectors.items():
        p, c = pause_parts[scorer], complete_parts[scorer]
        figures = summarize(p, c, detector.required_silence)
        waits = [detector.required_silence(case.candidates[-1][2]) for case in c]
        figures["wait_p50_ms"] = _ms(statistics.median(waits))
        figures["ready_p50_ms"] = _ms(statistics.median(case.candidates[-1][1] - case.end for case in c))
        figures["policy"] = _policy(detector)
        figures["cut_off_fragments"] = [
            {"fragment": f, "pause_s": g, "heard": case.texts, "p": round(case.candidates[0][2], 3)}
            for (f, _), case, g in zip(pauses, p, gaps, strict=True)
            if replay(case, detector.required_silence)[0]
        ]
        figures["slow_turns"] = [
            {"turn": t, "heard": case.texts[0], "p": round(case.candidates[-1][2], 3), "latency_ms": _ms(latency)}
            for t, case in zip(completes, c, strict=True)
            for _, latency in [replay(case, detector.required_silence)]
            if latency is None or latency > 0.4
        ]
        results[scorer] = figures
        figures["policies"] = policy_table(p, c)
        curves[scorer] = curve(figures["policies"])
        marks[scorer] = (figures["latency_p50_ms"], figures["false_cutoff_rate"])
        print(
            f"{scorer:10s} false cut-offs {figures['false_cutoffs']}/{figures['pause_cases']}, latency p50 "
            f"{figures['latency_p50_ms']} ms (wait {figures['wait_p50_ms']} ms, compute {figures['ready_p50_ms']} ms), "
            f"p90 {figures['latency_p90_ms']} ms (policy {figures['policy']})"
        )
    if out is not None:
        results["curve_png"] = _plot_turn_curves(out, curves, marks)
    return results


def _pauses(n: int) -> list[float]:
    from agent.turn_eval import pause_lengths

    return pause_lengths(n)


def _bench_turn_scores(settings: Settings, repeats: int) -> dict:
    """Each scoring on the teacher's complete vs unfinished phrases as whisper heard them, and its speed."""
    from agent.asr import WhisperAsr
    from agent.turn_detector import EndOfTurnModel
    from model.backbone import load_backbone
    from model.turn_head import load_head
    from training.teacher import teacher_voice, voiced_16k

    backbone = load_backbone(settings.assets.llm, settings.assets.cache_dir, settings.device)
    asr = WhisperAsr(settings.asr, settings.assets.whisper)
    voice = teacher_voice(settings.assets.piper_voice)

    def heard(text: str) -> str:
        return asr.transcribe(voiced_16k(voice, text))

    complete = [heard(t) for t in COMPLETE_PHRASES]
    unfinished = [heard(t) for t in UNFINISHED_PHRASES]
    summary: dict = {"complete_heard": complete, "unfinished_heard": unfinished}
    print(
        "whisper heard:",
        *[f"  complete:   {t}" for t in complete],
        *[f"  unfinished: {t}" for t in unfinished],
        sep="\n",
    )
    head, _ = load_head(settings.turn.checkpoint)
    variants = {
        "sentence_end": EndOfTurnModel(backbone, settings.turn.system_prompt),
        "im_end": EndOfTurnModel(backbone, settings.turn.system_prompt, scoring="im_end"),
        "im_end_normalised": EndOfTurnModel(backbone, settings.turn.system_prompt, scoring="im_end_normalised"),
        "sentence_end_int8": EndOfTurnModel(backbone, settings.turn.system_prompt, quantize=True),
        "trained_int8": EndOfTurnModel(backbone, settings.turn.system_prompt, quantize=True, head=head),
    }
    for name, model in variants.items():
        pc = [model.probability(t) for t in complete]
        pu = [model.probability(t) for t in unfinished]
        # Fraction of (complete, unfinished) pairs scored in the right order (ROC AUC).
        auc = statistics.mean(1.0 if c > u else 0.5 if c == u else 0.0 for c in pc for u in pu)
        summary[name] = {
            "auc": round(auc, 3),
            "complete_min": round(min(pc), 3),
            "unfinished_max": round(max(pu), 3),
            "complete": [round(p, 3) for p in pc],
            "unfinished": [round(p, 3) for p in pu],
        }
        print(f"{name:18s} AUC {auc:.3f}  complete min {min(pc):.3f}  unfinished max {max(pu):.3f}")
    timed = (("eot_fp32", "sentence_end"), ("eot_int8", "sentence_end_int8"), ("trained_int8", "trained_int8"))
    for key, name in timed:
        model = variants[name]
        model.probability(BENCH_SENTENCES[0])  # warm-up
        times, cpu = [], []
        for _ in range(max(1, repeats)):
            for text in BENCH_SENTENCES:
                started, started_cpu = time.perf_counter(), time.thread_time()
                model.probability(text)
                times.append(time.perf_counter() - started)
                cpu.append(time.thread_time() - started_cpu)
        # With one torch thread the forward runs on this thread: its CPU time is about the wall
        # time it takes on an idle core, whatever else shares the machine.
        summary[f"{key}_ms"] = round(1000 * statistics.median(times), 1)
        summary[f"{key}_cpu_ms"] = round(1000 * statistics.median(cpu), 1)
        print(
            f"P(end of turn) {key}: median of {len(times)} typical turns {summary[f'{key}_ms']} ms wall, "
            f"{summary[f'{key}_cpu_ms']} ms CPU"
        )
    return summary


def _write_turn_report(out: Path, summary: dict) -> None:
    rows = []
    for scorer in SCORERS:
        r = summary[scorer]
        rows.append(
            f"| {scorer} | {r['false_cutoffs']}/{r['pause_cases']} ({100 * r['false_cutoff_rate']:.0f}%) | "
            f"{r['complete_cutoffs']} | {r['turns_found']}/{r['complete_turns']} | {r['latency_p50_ms']} ms | "
            f"{r['latency_p90_ms']} ms | {r['policy']['min_silence_ms']} / {r['policy']['max_silence_ms']} ms, "
            f"P {r['policy']['eot_hold']}-{r['policy']['eot_threshold']} |"
        )
    speed = (
        f"P(end of turn) per call, one torch thread: zero-shot fp32 {summary['eot_fp32_ms']} ms wall "
        f"({summary['eot_fp32_cpu_ms']} ms CPU), zero-shot int8 {summary['eot_int8_ms']} ms "
        f"({summary['eot_int8_cpu_ms']} ms CPU), trained int8 {summary['trained_int8_ms']} ms "
        f"({summary['trained_int8_cpu_ms']} ms CPU)."
    )
    scores = [
        f"| {name} | {summary[name]['auc']} | {summary[name]['complete_min']} | {summary[name]['unfinished_max']} |"
        for name in ("sentence_end", "im_end", "im_end_normalised", "sentence_end_int8", "trained_int8")
    ]
    lines = [
        "# Benchmark: turn (end-of-turn scorers on held-out pause cases and complete turns)",
        "",
        f"`ttt bench turn` on {os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"load average {summary['load_avg_1m']}. Held-out sets: training/turn_pauses.txt "
        "(fragment voiced on its own by the steady teacher voice, a pause of 0.5-1.5 s, its continuation) "
        "and training/turn_complete.txt, heard by `ttt listen` as fast as possible, each scorer with "
        "its own wait policy. A false cut-off: an end of turn before the case's speech is over. "
        "Both scorers read every plausible reading of the transcript's last word (agent/asr.py "
        "`Decoding.readings`: whisper's other words there with P >= 0.1, each completed by whisper) and "
        "the least finished reading sets the wait.",
        "",
        *(
            [
                "**Heard from their parts (`--offline`):** each case voiced, decoded after each part and scored "
                "once (agent/turn_eval.py `score_parts`), each scorer's policy replayed; a candidate is ready "
                "64 ms after its speech end plus the CPU time of its decode and score (all threads), an upper "
                "bound for an idle machine. Used when the shared machine is too busy to time the listener.",
                "",
            ]
            if summary.get("offline")
            else []
        ),
        "| scorer | false cut-offs (pause cases) | cut-offs (complete turns) | turns found | latency p50 | "
        "latency p90 | policy (min / max wait, P hold-threshold) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "![cut-offs against latency](turn_curve.png)",
        "",
        "The curve replays every policy of the grid (agent/turn_eval.py `policy_grid`) on the candidates "
        "each scorer produced; the star is the scorer's own policy as heard.",
        "",
        speed,
        "",
        "Scores on the six complete and six unfinished phrases of agent/bench.py, voiced and transcribed:",
        "",
        "| scoring | AUC | complete min | unfinished max |",
        "|---|---|---|---|",
        *scores,
        "",
    ]
    for scorer in SCORERS:
        cut = summary[scorer]["cut_off_fragments"]
        slow = summary[scorer]["slow_turns"]
        lines.append(
            f"{scorer}: cut off {len(cut)}: " + "; ".join(f"{c['fragment']!r} ({c['pause_s']} s)" for c in cut)
        )
        slow_text = "; ".join(f"{t['turn']!r} {t['latency_ms']}" for t in slow)
        lines.append(f"{scorer}: complete turns over 400 ms: {slow_text}")
        lines += [""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


def bench_real(
    settings: Settings, count: int = 80, out: Path | None = Path("benchmarks/real_speech.md"), offline: bool = False
) -> dict:
    """Real human speech (the Asterisk prompts): ``ttt listen`` with each scorer against whisper offline.

    ``offline``: each prompt cut at the pauses the VAD hears, decoded and scored after each part
    (agent/turn_eval.py ``score_parts``), each scorer's policy replayed; latencies are CPU-time bounds.
    """
    from agent.asr import WhisperAsr
    from agent.real_speech import choose_prompts, ends_a_sentence, load_prompt, read_prompts, write_prompts
    from agent.turn_eval import CASE_GAP_S, split_cases

    try:
        prompts = choose_prompts(read_prompts(), count)
    except FileNotFoundError as exc:
        from agent.cli import UserError

        raise UserError(str(exc)) from None
    clips = [load_prompt(p) for p in prompts]
    refs = [p.text for p in prompts]
    asr = WhisperAsr(settings.asr, settings.assets.whisper)
    language = settings.asr.language if asr.model.model.is_multilingual else None

    def offline(clip: np.ndarray) -> str:
        segments, _ = asr.model.transcribe(clip, language=language, condition_on_previous_text=False, vad_filter=False)
        return " ".join(s.text.strip() for s in segments)

    offline_beam = [offline(c) for c in clips]  # faster-whisper's own transcribe: 30 s window, beam 5
    offline_greedy = [asr.transcribe(c) for c in clips]  # our decoder on the whole prompt: greedy, 8 s window
    summary: dict = {
        "bench": "real",
        "prompts": len(prompts),
        "audio_s": round(sum(len(c) for c in clips) / 16_000, 1),
        "complete_prompts": sum(p.complete for p in prompts),
        "whisper_offline_wer": round(word_error_rate(refs, offline_beam), 4),
        "whisper_offline_greedy_wer": round(word_error_rate(refs, offline_greedy), 4),
    }
    if offline:
        summary.update(_real_parts(settings, prompts, clips, asr, offline_beam))
        summary["offline"] = True
    with tempfile.TemporaryDirectory(prefix="ttt-real-") as tmp:
        path = Path(tmp) / "prompts.wav"
        spans = write_prompts(clips, path, CASE_GAP_S)
        for scorer in () if offline else SCORERS:
            chosen = copy.deepcopy(settings)
            chosen.turn.scorer = scorer
            listener = Listener.from_settings(chosen)
            try:
                result = listen_file(listener, path)
            finally:
                listener.close()
            cases = split_cases(result.events, spans)
            heard = [" ".join(c.texts) for c in cases]
            gap, se = wer_gap(refs, offline_beam, heard)
            latencies = [c.latency for c, p in zip(cases, prompts, strict=True) if p.complete and c.latency is not None]
            paused = [c for c in cases if len(c.candidates) > 1]
            mid_phrase = []
            for c, p in zip(cases, prompts, strict=True):
                if not c.cut_off:
                    continue
                before = [t for t, x in zip(c.texts, c.turn_times, strict=True) if x < c.end]
                if not ends_a_sentence(" ".join(before), p.text):
                    mid_phrase.append({"prompt": p.name, "text": p.text, "heard": c.texts})
            summary[scorer] = {
                "wer": round(word_error_rate(refs, heard), 4),
                "wer_minus_offline": round(gap, 4),
                "wer_minus_offline_se": round(se, 4),
                "turns_found": sum(c.latency is not None for c in cases),
                "latency_p50_ms": _ms(statistics.median(latencies)) if latencies else None,
                "latency_p90_ms": _ms(float(np.percentile(latencies, 90))) if latencies else None,
                "prompts_with_pauses": len(paused),
                "cut_offs": sum(c.cut_off for c in cases),
                "cut_offs_mid_sentence": len(mid_phrase),
                "mid_sentence": mid_phrase,
                "rtf": round(result.rtf, 3),
            }
            r = summary[scorer]
            print(
                f"{scorer:10s} WER {100 * r['wer']:.1f}% (offline {100 * summary['whisper_offline_wer']:.1f}%), "
                f"turns {r['turns_found']}/{len(prompts)}, latency p50 {r['latency_p50_ms']} ms on complete prompts, "
                f"cut-offs {r['cut_offs']} ({r['cut_offs_mid_sentence']} mid-sentence) of {len(paused)} paused prompts"
            )
    summary["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(summary))
    if out is not None:
        _write_real_report(out, summary)
    return summary


def _real_parts(settings: Settings, prompts: list, clips: list, asr, offline_beam: list[str]) -> dict:  # noqa: ANN001
    """Each prompt heard from its VAD segments by every scorer; figures as ``bench_real`` reports them."""
    from agent.real_speech import ends_a_sentence
    from agent.turn_eval import replay, score_parts, speech_segments
    from audio_io.vad import SileroVad

    vad = SileroVad.from_settings(settings)
    parts = [speech_segments(clip, vad) for clip in clips]
    detectors = _scorers(settings)
    scorers = {name: d.eot_model for name, d in detectors.items()}
    scored = score_parts([s for s, _ in parts], [g for _, g in parts], asr, scorers)
    refs = [p.text for p in prompts]
    figures = {}
    for scorer, detector in detectors.items():
        cases = scored[scorer]
        heard = [c.texts[0] for c in cases]
        replays = [replay(c, detector.required_silence) for c in cases]
        latencies = [x for (_, x), p in zip(replays, prompts, strict=True) if p.complete and x is not None]
        mid = []
        for (cut, _), case, prompt in zip(replays, cases, prompts, strict=True):
            if cut:
                # the candidate the replay ended at: the first whose wait ran out before the speech went on
                wait = detector.required_silence
                k = next(i for i, c in enumerate(case.candidates) if c[3] is None or c[3] - c[0] > wait(c[2]))
                if not ends_a_sentence(case.scored[k], prompt.text):
                    mid.append({"prompt": prompt.name, "text": prompt.text, "heard": [case.scored[k]]})
        gap, se = wer_gap(refs, offline_beam, heard)
        figures[scorer] = {
            "wer": round(word_error_rate(refs, heard), 4),
            "wer_minus_offline": round(gap, 4),
            "wer_minus_offline_se": round(se, 4),
            "turns_found": sum(x is not None for _, x in replays),
            "latency_p50_ms": _ms(statistics.median(latencies)) if latencies else None,
            "latency_p90_ms": _ms(float(np.percentile(latencies, 90))) if latencies else None,
            "prompts_with_pauses": sum(len(c.candidates) > 1 for c in cases),
            "cut_offs": sum(cut for cut, _ in replays),
            "cut_offs_mid_sentence": len(mid),
            "mid_sentence": mid,
            "rtf": None,
        }
        r = figures[scorer]
        print(
            f"{scorer:10s} WER {100 * r['wer']:.1f}%, turns {r['turns_found']}/{len(prompts)}, latency p50 "
            f"{r['latency_p50_ms']} ms on complete prompts, cut-offs {r['cut_offs']} ({len(mid)} mid-sentence) "
            f"of {r['prompts_with_pauses']} paused prompts"
        )
    return figures


def _write_real_report(out: Path, summary: dict) -> None:
    rows = []
    for scorer in SCORERS:
        r = summary[scorer]
        rows.append(
            f"| {scorer} | {100 * r['wer']:.1f}% | "
            f"{100 * r['wer_minus_offline']:+.1f} ± {100 * r['wer_minus_offline_se']:.1f} | "
            f"{r['turns_found']}/{summary['prompts']} | {r['latency_p50_ms']} ms | {r['latency_p90_ms']} ms | "
            f"{r['cut_offs']} ({r['cut_offs_mid_sentence']}) / {r['prompts_with_pauses']} | {r['rtf']} |"
        )
    lines = [
        "# Benchmark: real human speech (Asterisk core prompts)",
        "",
        f"`ttt bench real` on {os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"load average {summary['load_avg_1m']}. {summary['prompts']} prompts of 4 words or more "
        f"({summary['audio_s']} s of speech, {summary['complete_prompts']} of them complete utterances), "
        "one studio voice (Debian asterisk-core-sounds-en-g722, CC-BY-SA, installed at run time), joined with "
        "2.6 s gaps and heard by `ttt listen` as fast as possible. Latency: end of turn minus the end of "
        "the prompt's audio, on complete prompts.",
        "",
        *(
            [
                "**Heard from their parts (`--offline`):** each prompt cut at the pauses silero hears in it, "
                "decoded and scored after each part (agent/turn_eval.py `score_parts`), each scorer's policy "
                "replayed; latency bounds from CPU time (64 ms + decode + score), not the listener's clock.",
                "",
            ]
            if summary.get("offline")
            else []
        ),
        f"whisper tiny.en offline on each prompt alone: {100 * summary['whisper_offline_wer']:.1f}% WER "
        f"(faster-whisper transcribe, beam 5); {100 * summary['whisper_offline_greedy_wer']:.1f}% "
        "with our greedy decoder.",
        "",
        "| scorer | WER | minus offline (points, ± s.e.) | turns found | latency p50 | latency p90 | "
        "cut-offs (mid-sentence) / prompts with pauses | RTF |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    for scorer in SCORERS:
        for cut in summary[scorer]["mid_sentence"]:
            lines.append(f"- {scorer} cut mid-sentence: {cut['prompt']} {cut['text']!r} heard as {cut['heard']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def run_bench(settings: Settings, what: str, args: argparse.Namespace) -> int:
    """``ttt bench WHAT``."""
    repeats = getattr(args, "repeats", 3)
    cases = getattr(args, "cases", 0)
    if what == "listen":
        bench_listen(settings, repeats)
    elif what == "turn":
        bench_turn(settings, repeats, cases=cases, offline=args.offline)
    elif what == "real":
        bench_real(settings, count=cases or 80, offline=args.offline)
    return 0
