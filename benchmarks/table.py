"""Writes the results table of benchmarks/README.md (between its `results` markers) from benchmarks/results/*.json, so
that the table always shows the last measured figures and the machine they were measured on.

    python benchmarks/table.py   (make bench runs it after the benchmarks)
"""

from __future__ import annotations

import json
import os
import sys

from common import BENCHMARKS_DIR, MIB, RESULTS_DIR

README = BENCHMARKS_DIR / "README.md"
BEGIN, END = "<!-- results: written by benchmarks/table.py -->", "<!-- end of results -->"


def _ms(seconds):
    return "—" if seconds is None else f"{seconds * 1000:,.1f}"


def loss_section(result: dict) -> list[str]:
    lines = ["### bench-loss: TripletSemiHardLoss, forward + backward", "",
             ("| B | ours: ms | ours: peak MiB | previous (sorted rows): ms | tfa tiled: ms | tfa tiled: peak MiB "
              "| sorted / ours | tiled / ours |"), "|---|---|---|---|---|---|---|---|"]
    by_case = {(r["implementation"], r["batch_size"]): r for r in result["results"]}
    no_run = {"seconds": None}

    def ratio(row, ours):
        return f"{row['seconds'] / ours['seconds']:.1f}x" if row["seconds"] and ours["seconds"] else "—"

    for size in sorted({r["batch_size"] for r in result["results"]}):
        ours, naive = by_case[("ours", size)], by_case[("naive", size)]
        previous = by_case.get(("sorted", size), no_run)  # results written before bench-loss measured it have none
        naive_memory = naive.get("failed") or f"{naive['peak_memory_mib']:,.0f}"
        lines.append(f"| {size} | {_ms(ours['seconds'])} | {ours['peak_memory_mib']:,.0f} | "
                     f"{previous.get('failed') or _ms(previous['seconds'])} | {_ms(naive['seconds'])} | "
                     f"{naive_memory} | {ratio(previous, ours)} | {ratio(naive, ours)} |")
    return lines


def train_section(result: dict) -> list[str]:
    settings = result["settings"]
    lines = [(f"### bench-train: training step (batch {settings['batch_size']}) and inference (batch "
             f"{settings.get('inference_batch_size', '—')})"), "",
             ("| model | image | precision | train images/s | GFLOP/image (train) | GFLOP/s | matmul GFLOP/s of that "
              "precision, just before | of that peak | per CPU-second | inference images/s | of that peak |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    cases = [r for r in result["results"] if "model" in r]
    levers = [r for r in result["results"] if "lever" in r]
    for r in cases:
        peak = r.get("matmul_peak_of_its_precision_gflops", r["float32_matmul_peak_gflops"])
        fraction = r.get("fraction_of_its_matmul_peak", r.get("fraction_of_float32_matmul_peak"))
        per_cpu = r.get("cpu_time_fraction_of_its_matmul", r.get("cpu_time_fraction_of_float32_matmul"))
        inference = r.get("inference_images_per_second")
        lines.append(f"| {r['model']} | {r['image_size']}² | {r['precision']} | {r['images_per_second']:.1f} | "
                     f"{r['training_gflop_per_image']:.1f} | {r['achieved_gflops']:.0f} | {peak:.0f} | "
                     f"{fraction:.0%} | {per_cpu:.0%} | "
                     + (f"{inference:.1f} | {r['inference_fraction_of_its_matmul_peak']:.0%} |" if inference else "— | — |"))
    peak = result["summary"]["matmul_peak_gflops"]
    lines += ["", (f"Highest tf.matmul 4096² of the run: float32 {peak['float32']:.0f} GFLOP/s, bfloat16 "
                   f"{peak['bfloat16']:.0f} GFLOP/s.")]
    if levers:
        before, fused = "float32, Keras batch norm (before)", "float32, fused batch norm"
        lines += ["", (f"Levers of the bfloat16 step, each alone in a process of its own ({settings['lever_case']}, batch "
                      f"{settings['batch_size']} unless said):"), "",
                  f"| lever | images/s | / {before} | / {fused} | per CPU-second / {before} |", "|---|---|---|---|---|"]
        for r in levers:
            lines.append(f"| {r['lever']} | {r['images_per_second']:.1f} | {r['ratio_to ' + before]:.2f}x | "
                         f"{r['ratio_to ' + fused]:.2f}x | {r['cpu_ratio_to ' + before]:.2f}x |")
    return lines


def pipeline_section(result: dict) -> list[str]:
    lines = ["### bench-pipeline: input feed vs training", "",
             "| profile | image | feed images/s | training images/s | feed / training |", "|---|---|---|---|---|"]
    for r in result["results"]:
        lines.append(f"| {r['profile']} | {r['image_size']}² | {r['feed_images_per_second']:,.0f} | "
                     f"{r['training_images_per_second']:.1f} | {r['feed_over_training']:.0f}x |")
    lines += ["", ("End-of-epoch stall through `experimental_distribute_dataset`, seconds per epoch (last step → end of "
              "sequence + tear-down):"), ""]
    for setting, parts in result["summary"]["end_of_epoch_stall_seconds"].items():
        epochs = ", ".join(f"{a:.3f} + {b:.3f}" for a, b in zip(parts["end_of_sequence"], parts["tear_down"]))
        lines.append(f"- {setting}: {epochs}")
    return lines


def contrastive_section(result: dict) -> list[str]:
    summary = result["summary"]
    lines = [f"### bench-contrastive: one epoch over {summary['pairs']} training pairs", "",
             (f"| path | epoch s | one-time features of {summary['images']:,} images, s | estimated epoch over all "
             f"{summary['training_pairs_of_the_profile']:,} pairs, s |"), "|---|---|---|---|"]
    for r in result["results"]:
        lines.append(f"| {r['path']} | {r['epoch_seconds']:.2f} | {r['one_time_feature_seconds']:.1f} | "
                     f"{summary['estimated_full_epoch_seconds'][r['path']]:,.0f} |")
    return lines


def gallery_section(result: dict) -> list[str]:
    summary, settings = result["summary"], result["settings"]
    under_target = summary["exact_p50_under_target_up_to"]
    lines = [(f"### bench-gallery: nearest of {summary['references']:,} references ({settings['metric']}, "
              f"{settings['embedding_dim']}-d, one query at a time, k = {settings['k']})"), "",
             ("| search | references | p50 ms | p95 ms | recall@1: reference / writer | build s | index MiB "
              "| peak RSS growth MiB |"), "|---|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        if r["search"] == "exact":
            lines.append(f"| exact | {r['references']:,} | {r['p50_ms']:,.2f} | {r['p95_ms']:,.2f} | (the reference) | — | — | — |")
        else:
            lines.append(f"| {r['search']} | {r['references']:,} | {r['p50_ms']:,.2f} | {r['p95_ms']:,.2f} | "
                         f"{r['recall_at_1']:.3f} / {r['writer_agreement_at_1']:.3f} | {r['build_seconds']:.0f} | "
                         f"{r['index_bytes'] / MIB:,.0f} | {r['peak_rss_growth_bytes'] / MIB:,.0f} |")
    lines += ["", (f"Exact search's top-1 reference is the query's writer for {summary['exact_top1_is_query_writer']:.0%} "
                   f"of the queries. `EXACT_SEARCH_MAX_REFERENCES` = {summary['exact_search_max_references']:,}; exact "
                   f"p50 stayed under 10 ms up to {f'{under_target:,}' if under_target else 'none of the measured'} references.")]
    return lines


def verify_section(result: dict) -> list[str]:
    summary, settings = result["summary"], result["settings"]
    cold = summary["cold_start"]
    return [(f"### bench-verify: one questioned signature against {settings['references']} references "
             f"({settings['model']}, {settings['image_size']}²)"), "",
            "| in process p50 ms | p95 ms | target ms | CLI call s | import s | model load s | first call s |",
            "|---|---|---|---|---|---|---|",
            (f"| {summary['in_process_verify_ms_p50']:.1f} | {summary['in_process_verify_ms_p95']:.1f} | "
             f"{summary['target_ms']} | {summary['cli_call_s_median']:.1f} | {cold['import_s']:.1f} | "
             f"{cold['model_load_s']:.1f} | {cold['first_call_s']:.1f} |")]


def synthetic_section(result: dict) -> list[str]:
    summary, settings = result["summary"], result["settings"]
    return [f"### bench-synthetic: the synthetic pool's generator vs the pretraining step ({settings['image_size']}²)",
            "", ("| generator images/s, one process | processes | all processes | training images/s | generator / "
                 "training | pool of 5,000 writers, min |"), "|---|---|---|---|---|---|",
            (f"| {summary['generator_images_per_second_one_process']:.0f} | {summary['processes']} | "
             f"{summary['generator_images_per_second_all_processes']:.0f} | {summary['training_images_per_second']:.1f} "
             f"| {summary['generator_over_training']:.1f}x | {summary['pool_5000_writers_minutes']:.1f} |")]


SECTIONS = {"loss": loss_section, "train": train_section, "pipeline": pipeline_section, "contrastive": contrastive_section,
            "gallery": gallery_section, "verify": verify_section, "synthetic": synthetic_section}


def render() -> str:
    lines = []
    for name, section in SECTIONS.items():
        path = RESULTS_DIR / f"{name}.json"
        if not path.exists():
            lines += [f"### bench-{name}", "", f"Not measured yet: `make bench-{name}`.", ""]
            continue
        result = json.loads(path.read_text())
        environment = result["environment"]
        lines += section(result)
        lines += ["", f"`{result['ratio_line']}`", "",
                  (f"Measured {environment['date']} on {environment['cpu']}, {environment['cores']} cores, TensorFlow "
                  f"{environment.get('tensorflow', '?')}; load average {environment['load_average_at_start'][0]:.1f} "
                  f"at the start, {environment['load_average_at_end'][0]:.1f} at the end."), ""]
    return "\n".join(lines).rstrip("\n")


def main() -> int:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        print(f"error: {README} has no {BEGIN} … {END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    temporary = README.with_name(f".{README.name}.{os.getpid()}.tmp")
    temporary.write_text(f"{head}{BEGIN}\n{render()}\n{END}{tail}")
    os.replace(temporary, README)
    print(f"updated {README.relative_to(BENCHMARKS_DIR.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
