"""d. Achieved GFLOP/s of IWAE evaluation against a measured float32 torch.mm rate."""

from rich.table import Table
from torch import nn

from benchmark.timing import console, fmt, interleaved_times, ratios, spread, verdict, wanted
from benchmark.workloads import FAMILY_NAMES, linear_flops, matmul, square_matmul, training_model
from vae_compare import data, evaluate
from vae_compare.model import IMAGE_SIZE

# IWAE GFLOP/s / best torch.mm GFLOP/s
TARGET = (">=", 0.5)


def measure(args, device, pixels, b_rows):
    """IWAE evaluation (evaluate.iwae_log_px, 100 test images; FLOPs = 2 in out per decoder Linear per
    sample), torch.mm of a square shape and of the IWAE decoder's widest layer, interleaved; the fraction
    of the matmul rate is taken per round against the faster of the two mm shapes in that round. With b's
    rows (b run first), its d=16 training steps are shown at the same rate."""
    model = training_model("diag", 16, device).eval()
    split = data.Split(pixels[-100:])
    samples = 100 if args.quick else 1000
    sizes = [m.in_features for m in model.decoder if isinstance(m, nn.Linear)] + [IMAGE_SIZE]
    chunk = min(samples, evaluate.default_chunk_size(model, evaluate.IWAE_BATCH_SIZE, device))
    m, k, n = chunk * len(split), sizes[-2], sizes[-1]
    iwae_name = f"IWAE iwae_log_px, 100 images, k={samples}"
    square_name, square = square_matmul(args, device)
    work = {square_name: square, f"mm {m}x{k} @ {k}x{n} (IWAE decoder layer)": matmul(m, k, n, device),
            iwae_name: ((lambda: evaluate.iwae_log_px(model, split, samples)), linear_flops(sizes) * len(split) * samples)}
    times = interleaved_times({name: fn for name, (fn, _) in work.items()}, device, args.repeats)
    rates = {name: [flops / t / 1e9 for t in times[name]] for name, (_, flops) in work.items()}
    mm_names = [name for name in work if name.startswith("mm")]
    peaks = [max(rates[name][i] for name in mm_names) for i in range(args.repeats)]
    fraction = spread([iwae / peak for iwae, peak in zip(rates[iwae_name], peaks)])
    figures = {name: spread(values) for name, values in rates.items()}
    table = Table(title="d. achieved float32 GFLOP/s against the best measured torch.mm rate (median (IQR))")
    for column in ("workload", "GFLOP/s", "% of mm (per round)"):
        table.add_column(column, justify="right" if column != "workload" else "left")
    for name, figure in figures.items():
        share = ratios(rates[name], peaks)
        table.add_row(name, fmt(figure, 1), fmt(spread([100 * r for r in share]), 0))
    for row in b_rows:
        if row["latent_dim"] == 16:
            for family in FAMILY_NAMES:
                rate = row[family]["flops"] / row[family]["seconds"]["median"] / 1e9
                table.add_row(f"training step {family} d=16 (b's FLOPs, b's median)", f"{rate:.1f}",
                              f"{100 * rate / spread(peaks)['median']:.0f}")
    console.print(table)
    return {"gflops": figures, "peak_gflops": spread(peaks), "iwae_fraction_of_peak": fraction,
            "verdict": verdict(fraction, TARGET)}


def target_rows(result):
    """The summary's row (target, wanted, figure, where, verdict) of this comparison."""
    return [("d. IWAE GFLOP/s / best torch.mm GFLOP/s", wanted(TARGET), result["iwae_fraction_of_peak"], "",
             result["verdict"])]
