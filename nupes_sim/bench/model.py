"""Whole-model benchmark: the demo's Fashion-MNIST ResNet on N test images, the integer graph on
the CPU backend against the float32 PyTorch model and the exporter's float64 fake-quant twin.

The graph has the demo's integer configuration (W4 per-channel power weights, A8 power
activations, operand datapath, reference.export.ExportConfig tables and 48-bit saturating
accumulators); its weights are quantized by round-to-nearest (`rtn`) instead of NUPES, which
changes the codes but not the cost of simulating them, and takes seconds instead of minutes.
Batches of 500 images as in the demo; medians of --repeats runs after a warm-up.
"""

from .cpu import median_time


def run_model(n_images=2000, repeats=3, batch=500):
    """Dict of timings (s), or None with a printed reason when the data set is missing."""
    import torch

    from nupes_sim import cpu
    from nupes_sim.reference.data import FASHION_MISSING, fashion_available, fashion_tensors
    from nupes_sim.reference.evaluate import load_fashion_model
    from nupes_sim.reference.pipeline import quantize_to_graph

    if not fashion_available():
        print(f"model benchmark skipped: {FASHION_MISSING}")
        return None
    torch.manual_seed(0)
    xtr, _ = fashion_tensors("train")
    xte, _ = fashion_tensors("test")
    xte = xte[:n_images]
    ex, _ = quantize_to_graph("fashion-resnet", calib=xtr[:256], method="rtn", progress=False)
    model = load_fashion_model()
    spans = [(a, min(a + batch, len(xte))) for a in range(0, len(xte), batch)]
    codes = [ex.encode_input(xte[a:b].numpy()) for a, b in spans]

    def f32():
        with torch.inference_mode():
            for a, b in spans:
                model(xte[a:b])

    def sim():
        for c in codes:
            ex.graph.run(c, backend="cpu")

    def twin():
        for a, b in spans:
            ex.fake_quant(xte[a:b])

    cpu.STATS.clear()
    t_cpu = median_time(sim, repeats)
    path = ",".join(sorted(k for k in cpu.STATS if k.startswith(("gemm", "int_", "chunked"))))
    t_f32 = median_time(f32, repeats)
    t_fq = median_time(twin, repeats)
    r = dict(images=len(xte), cpu=t_cpu, torch=t_f32, twin=t_fq, path=path)
    print(
        f"model Fashion ResNet, {len(xte)} images: cpu {t_cpu:.2f} s  torch fp32 {t_f32:.2f} s  "
        f"cpu/torch {t_cpu / t_f32:.2f}x  fake-quant twin {t_fq:.2f} s ({t_fq / t_f32:.2f}x)  [{path}]",
        flush=True,
    )
    return r


def model_table(r):
    return "\n".join(
        [
            "| model | images | CPU backend (s) | PyTorch fp32 (s) | CPU / PyTorch | fake-quant twin (s) | twin / PyTorch | MAC paths |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
            f"| Fashion ResNet (demo configuration) | {r['images']} | {r['cpu']:.2f} | {r['torch']:.2f} | "
            f"{r['cpu'] / r['torch']:.2f}x | {r['twin']:.2f} | {r['twin'] / r['torch']:.2f}x | {r['path']} |",
        ]
    )


def model_verdicts(r):
    a, b = r["cpu"] / r["torch"], r["twin"] / r["torch"]
    return (
        f"- whole model on the CPU backend: {a:.2f}x PyTorch fp32, target <= 1.5x: {'met' if a <= 1.5 else 'MISSED'}\n"
        f"- whole model, float64 fake-quant twin: {b:.2f}x PyTorch fp32, target <= 2x: {'met' if b <= 2 else 'MISSED'}"
    )
