"""MeMViT on the long-range synthetic task: does memory carry an event from the first clip to the last?

Each long video (``tubelet.data.synthetic.render_long_video``) shows a large square of the label's colour
in its first clip only; every later clip is label-independent. Two models of the same architecture and
the same compute per clip (memory adds the counted few percent) are trained in the online order
(``tubelet.data.online``: each batch slot walks one video's clips in time order, videos reshuffled per
epoch) with cross entropy on every clip (``--loss-on last``: on each video's last clip only): MeMViT, and the same pool-first MViTv2 without memory. Reported:
top-1 on the *last* clip of held-out long videos (chance = 1 / classes) and, as a sanity check, on the
first clip (where the cue is visible to both).

``--quick``: a few epochs, seconds (checks that it runs; the numbers mean nothing).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, default_collate

from tubelet.data.online import OnlineClips
from tubelet.data.synthetic import LongRangeVideos
from tubelet.engine.datamodule import OnlineOrderSampler, SeededCollate, SeededDataset
from tubelet.models import create_model

MODEL = dict(num_classes=4, depth=4, embed_dim=32, num_heads=1, transitions=(1, 3), kv_stride=(1, 2, 2),
             drop_path_rate=0.0, head_dropout=0.0)


def train(memory: bool, args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    model = create_model("memvit_16", memory=memory, num_frames=args.frames, img_size=args.size, **MODEL).train()
    source = LongRangeVideos(args.videos, seed=args.seed, num_clips=args.clips, clip_frames=args.frames,
                             size=args.size, num_classes=4)
    data = OnlineClips(source, num_streams=args.batch, seed=args.seed)
    sampler = OnlineOrderSampler(data, args.batch, seed=args.seed)
    loader = DataLoader(SeededDataset(data), batch_size=args.batch, sampler=sampler, drop_last=True,
                        collate_fn=SeededCollate(default_collate))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.1)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        if memory:
            model.clear_memory()  # epoch start (the engine's ClearMemory callback does this in `tubelet fit`)
        for batch in loader:
            logits = model(batch["video"], video_ids=batch["video_id"]) if memory else model(batch["video"])
            if args.loss_on == "last":  # the label is asked for at a video's last clip only
                weight = (batch["clip_index"] == args.clips - 1).float()
                loss = (F.cross_entropy(logits, batch["label"], reduction="none") * weight).sum() / weight.sum().clamp(min=1)
            else:
                loss = F.cross_entropy(logits, batch["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def evaluate(model: torch.nn.Module, memory: bool, args: argparse.Namespace) -> tuple[float, float]:
    """Top-1 on the first and the last clip of held-out long videos, each video streamed from its start."""
    source = LongRangeVideos(args.val_videos, seed=args.seed, first=1_000_000, num_clips=args.clips,
                             clip_frames=args.frames, size=args.size, num_classes=4)
    first = last = 0
    for lo in range(0, args.val_videos, args.batch):
        vids = list(range(lo, min(lo + args.batch, args.val_videos)))
        if memory:
            model.clear_memory()  # before evaluation, and between groups of videos
        labels = torch.tensor([source.video(v)[1] for v in vids])
        for c in range(args.clips):
            x = torch.stack([source.clip(v, c)["video"] for v in vids])
            pred = (model(x, video_ids=torch.tensor(vids)) if memory else model(x)).argmax(-1)
            if c == 0:
                first += int((pred == labels).sum())
            if c == args.clips - 1:
                last += int((pred == labels).sum())
    return first / args.val_videos, last / args.val_videos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--videos", type=int, default=100)
    ap.add_argument("--val-videos", type=int, default=128)
    ap.add_argument("--clips", type=int, default=5, help="clips per long video; the cue is in the first")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=8, help="frames per clip")
    ap.add_argument("--size", type=int, default=32, help="frame size")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loss-on", choices=("all", "last"), default="all",
                    help="cross entropy on every clip, or on each video's last clip only")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.videos, args.val_videos = 2, 32, 8
    torch.set_num_threads(args.threads)
    print(f"long-range task: {args.clips} clips of {args.frames}x{args.size}x{args.size} per video, cue in clip 0, 4 classes (chance 25%); "
          f"{args.videos} training videos x {args.epochs} epochs, {args.val_videos} held-out videos, loss on "
          f"{args.loss_on} clips")
    print("| model | top-1, first clip | top-1, last clip |")
    print("|---|--:|--:|")
    for memory in (False, True):
        model = train(memory, args)
        f, last = evaluate(model, memory, args)
        name = "MeMViT (gap2, 2 memory clips)" if memory else "same MViTv2 without memory"
        print(f"| {name} | {100 * f:.1f}% | {100 * last:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
