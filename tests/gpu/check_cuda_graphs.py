"""GPU check of the CUDA-graph path of the four transforms (run it on a GPU: CI has none).

    python tests/gpu/check_cuda_graphs.py

Checks, each printed as PASS/FAIL with numbers: replay equals eager (relevance-driven mask, same noise);
in-place optimizer updates are seen without recapture; replacing a parameter, moving a buffer to new storage and
changing the module tree force a recapture; a last batch of another size is correct; random numbers differ
between batches and follow the generator; labels out of range and non-finite relevance still raise; the model
state is untouched; and for RelevanceErasing2d, RelevanceDropout3d and RelevanceErasing3d (dense batches):
replay equals eager for the same generator, at p = 1 and p = 0.5, and for PyG batches. Exits 1 if any check fails, 0 otherwise; without CUDA it prints that it skipped and exits 0.
"""

from __future__ import annotations

import sys

import torch
from torch import nn


def main() -> int:
    if not torch.cuda.is_available():
        print("check_cuda_graphs: CUDA is not available: skipped (nothing checked).")
        return 0

    from torchvision.models import resnet18

    import reldrop_transforms as rt

    failures = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}")
        if not ok:
            failures.append(name)

    torch.manual_seed(0)
    device = torch.device("cuda")
    model = resnet18(num_classes=10).to(device)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 3, 32, 32, device=device))
    images = torch.randn(64, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (64,), device=device)

    def transform(graphs: bool, seed: int = 0, **kwargs) -> rt.RelevanceDropout2d:
        gen = torch.Generator(device=device).manual_seed(seed)
        return rt.RelevanceDropout2d(model, p=1.0, alpha=0.0, beta=0.5, generator=gen, cuda_graphs=graphs,
                                     backend="fast", **kwargs)

    # 1. replay equals eager (alpha = 0: the mask depends on relevance only)
    eager_t, graph_t = transform(False), transform(True)
    eager, _ = eager_t(images, labels)
    graph, _ = graph_t(images, labels)  # capture + first replay
    graph2, _ = graph_t(images, labels)  # pure replay
    differ = ((eager == 0).all(1) != (graph2 == 0).all(1)).float().mean().item()
    check("replay equals eager", differ < 1e-3 and graph_t._attributor._graphs.captures == 1,
          f"(fraction of differing mask pixels {differ:.2e}, captures {graph_t._attributor._graphs.captures})")
    rel = rt.attribution.relevance(model, images, labels, backend="fast")
    # 2. in-place optimizer step: no recapture, new weights seen
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
    model.eval()
    rel_after = rt.attribution.relevance(model, images, labels, backend="fast")
    model.train()
    eager_after, _ = transform(False)(images, labels)
    graph_after, _ = graph_t(images, labels)
    same = ((eager_after == 0).all(1) != (graph_after == 0).all(1)).float().mean().item()
    changed = ((rel_after - rel).norm() / rel.norm()).item()
    check("in-place update seen without recapture", same < 1e-3 and graph_t._attributor._graphs.captures == 1 and changed > 1e-3,
          f"(differing {same:.2e}, relevance changed by {changed:.2e}, captures {graph_t._attributor._graphs.captures})")
    # 3. replacing a parameter forces a recapture
    model.fc.weight = nn.Parameter(model.fc.weight.detach().clone() * 2)
    graph_t(images, labels)
    check("parameter replacement recaptures", graph_t._attributor._graphs.captures == 2, f"(captures {graph_t._attributor._graphs.captures})")
    model.bn1.running_var = model.bn1.running_var.clone()
    graph_t(images, labels)
    check("buffer replacement recaptures", graph_t._attributor._graphs.captures == 3, f"(captures {graph_t._attributor._graphs.captures})")
    # 4. module tree change recaptures
    model.layer4[1].relu = nn.ReLU()
    graph_t(images, labels)
    check("module tree change recaptures", graph_t._attributor._graphs.captures == 4, f"(captures {graph_t._attributor._graphs.captures})")
    # 5. last batch of another size
    tail_g, _ = graph_t(images[:24], labels[:24])
    tail_e, _ = transform(False)(images[:24], labels[:24])
    tail_diff = ((tail_e == 0).all(1) != (tail_g == 0).all(1)).float().mean().item()
    check("last batch of another size", tail_g.shape == (24, 3, 32, 32) and tail_diff < 1e-3,
          f"(differing {tail_diff:.2e}, graphs cached {len(graph_t._attributor._graphs)})")
    # 6. randomness: differs per batch, follows the generator
    noisy = rt.RelevanceDropout2d(model, p=1.0, alpha=0.5, beta=0.5, cuda_graphs=True, backend="fast",
                                  generator=torch.Generator(device=device).manual_seed(7))
    first, _ = noisy(images, labels)
    second, _ = noisy(images, labels)
    again = rt.RelevanceDropout2d(model, p=1.0, alpha=0.5, beta=0.5, cuda_graphs=True, backend="fast",
                                  generator=torch.Generator(device=device).manual_seed(7))
    first_again, _ = again(images, labels)
    eager_same_seed, _ = rt.RelevanceDropout2d(model, p=1.0, alpha=0.5, beta=0.5, backend="fast",
                                               generator=torch.Generator(device=device).manual_seed(7))(images, labels)
    check("noise differs between batches", not torch.equal(first, second))
    check("noise follows the generator", torch.equal(first, first_again))
    agree = ((eager_same_seed == 0).all(1) == (first == 0).all(1)).float().mean().item()
    check("graph and eager draw the same noise", agree > 0.999, f"(agreement {agree:.4f})")
    # noise from a CUDA generator for a CPU tensor: the device-to-host copy is waited for (a non-blocking one could
    # be read before its values arrive)
    from reldrop_transforms.functional import sample_coins, uniform_like

    big = torch.empty(4096, 1024)
    drawn = uniform_like(big, torch.Generator(device=device).manual_seed(11))
    expected = torch.rand(big.shape, generator=torch.Generator(device=device).manual_seed(11), device=device).cpu()
    coins = sample_coins(1 << 20, 0.5, generator=torch.Generator(device=device).manual_seed(12))
    check("CUDA generator, CPU tensor: the noise has arrived", torch.equal(drawn, expected)
          and coins.device.type == "cpu" and abs(coins.float().mean().item() - 0.5) < 0.01)
    # 7. errors still raised
    try:
        graph_t(images, torch.full_like(labels, 99))
        check("label out of range raises", False)
    except ValueError as error:
        check("label out of range raises", "class indices" in str(error))
    # 8. the model state is untouched by capture and replay
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    ids = [id(p) for p in model.parameters()]
    graph_t(images, labels)
    check("model state untouched", all(torch.equal(state[k], v) for k, v in model.state_dict().items())
          and flags == [m.training for m in model.modules()] and ids == [id(p) for p in model.parameters()])

    # 9. the other transforms: replay equals eager for the same generator (dense batches)
    from reldrop_transforms.models import PointNet

    torch.manual_seed(0)
    pointnet = PointNet(4, 10).to(device).eval()
    points = torch.randn(32, 256, 4, device=device)
    point_labels = torch.randint(0, 10, (32,), device=device)
    cases = [
        ("RelevanceErasing2d", rt.RelevanceErasing2d, model, images, labels, {"num_patches": 2, "top_k": 3}),
        ("RelevanceDropout3d", rt.RelevanceDropout3d, pointnet, points, point_labels, {"alpha": 0.0}),
        ("RelevanceErasing3d", rt.RelevanceErasing3d, pointnet, points, point_labels, {}),
    ]
    for name, cls, net, inputs, targets, options in cases:
        for p in (1.0, 0.5):
            outputs = []
            for graphs in (False, True):
                gen = torch.Generator(device=device).manual_seed(3)
                t = cls(net, p=p, generator=gen, cuda_graphs=graphs, backend="fast", **options)
                t(inputs, targets)  # capture (graphs) or warm-up
                gen.manual_seed(4)
                outputs.append(t(inputs, targets)[0])
            differ = (outputs[0] != outputs[1]).float().mean().item()
            check(f"{name} replay equals eager (p={p})", differ < 1e-3, f"(fraction differing {differ:.2e})")

    # 10. PyG batches (keyed by their tensors' shapes)
    from torch_geometric.data import Batch, Data

    clouds = Batch.from_data_list([Data(pos=torch.randn(n, 3), x=torch.randn(n, 1), y=torch.tensor([n % 10]))
                                   for n in (300, 250, 400, 280)]).to(device)
    for cls in (rt.RelevanceDropout3d, rt.RelevanceErasing3d):
        outputs = []
        for graphs in (False, True):
            gen = torch.Generator(device=device).manual_seed(3)
            t = cls(pointnet, generator=gen, cuda_graphs=graphs, backend="fast")
            t(clouds)
            gen.manual_seed(4)
            outputs.append(t(clouds).pos)
        differ = (outputs[0] != outputs[1]).float().mean().item()
        check(f"{cls.__name__} PyG replay equals eager", differ < 1e-3, f"(fraction differing {differ:.2e})")

    print(f"check_cuda_graphs: {len(failures)} failed: {failures}" if failures else "check_cuda_graphs: all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
