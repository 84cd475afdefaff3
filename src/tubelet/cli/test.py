"""``tubelet test [--config] RECIPE --checkpoint PATH [section.key=value ...]``: multi-view testing."""

from __future__ import annotations

import argparse

from tubelet.cli._recipe import add_recipe_arguments, load_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("test", help="multi-view test (clips x crops) of a checkpoint; prints top-1/top-5 (AVA detection: frame-mAP; box detectors: recall and AP)")
    add_recipe_arguments(p, example="data.test_clips=5")
    p.add_argument("--checkpoint", required=True,
                   help="training checkpoint (*.ckpt), method.safetensors or backbone.safetensors")
    p.set_defaults(run=run)


def format_table(results: dict) -> str:
    rows = [
        ("checkpoint", str(results["checkpoint"])),
        ("videos", str(results["num_videos"])),
        ("skipped (unreadable)", str(len(results.get("bad_samples", [])))),
        ("views per video", str(results["num_views"])),
        ("classes", str(results["num_classes"])),
        ("top-1 (%)", f"{100 * results['top1']:.2f}"),
        ("top-5 (%)", f"{100 * results['top5']:.2f}"),
        ("confusion matrix", results["confusion_png"]),
    ]
    if "retrieval" in results:  # a video-text method: top-1/top-5 above are zero-shot, from class prompts
        rows[5:7] = [("zero-shot top-1 (%)", rows[5][1]), ("zero-shot top-5 (%)", rows[6][1])]
        r = results["retrieval"]
        rows[-1:-1] = [(f"{name} R@1/5/10 (%)", " / ".join(f"{100 * r[f'{key}_r{k}']:.1f}" for k in (1, 5, 10)))
                       for name, key in (("text->video", "t2v"), ("video->text", "v2t"))]
        if "linear_probe_top1" in results:
            rows.insert(-1, ("linear probe top-1 (%)", f"{100 * results['linear_probe_top1']:.2f}"))
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 2 + max(len(v) for _, v in rows))
    return "\n".join([line] + [f"{k:<{width}}  {v}" for k, v in rows] + [line])


def format_detection_table(results: dict) -> str:
    """Per-class AP of an AVA evaluation, then the frame-mAP beside the class-prior baseline's."""
    from tubelet.eval.ava import format_ap_table

    lines = [format_ap_table(results["result"])]
    if "prior_mAP" in results:
        lines.append(f"class-prior baseline frame-mAP@0.5 (%): {100 * results['prior_mAP']:.2f}")
    lines.append(f"keyframes {results['num_keyframes']}, boxes {results['num_boxes']}, detections "
                 f"{results['detections_csv']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tubelet.engine import evaluate
    from tubelet.report import save_test_figures, write_run_report

    recipe = load_from_args(args)
    if recipe.data.kind == "ava":  # action detection: AVA's frame-mAP on the test keyframes' proposals
        from tubelet.engine.detection import evaluate_detection

        print(format_detection_table(evaluate_detection(recipe, args.checkpoint)))
        return 0
    if recipe.data.kind == "frame_boxes":  # a box detector: recall, precision and AP at IoU 0.5 on test frames
        from tubelet.engine.detector import evaluate_detector_checkpoint

        m = evaluate_detector_checkpoint(recipe, args.checkpoint)
        print(f"frames {int(m['num_frames'])}, boxes {int(m['num_gt'])}; at IoU 0.5: recall (score >= 0.3) "
              f"{100 * m['recall']:.1f} %, precision {100 * m['precision']:.1f} %, recall of all top-k "
              f"{100 * m['recall_all']:.1f} %, AP {100 * m['ap']:.1f} %")
        return 0
    results = evaluate(recipe, args.checkpoint)
    save_test_figures(results)
    print(format_table(results))
    for _, path, reason in results.get("bad_samples", []):
        print(f"skipped {path}: {reason}")
    print(f"report: {write_run_report(recipe.run_dir)}")
    return 0
