"""`nupes-sim bench --write` replaces only the generated CPU section of PERFORMANCE.md: the
subsections and sections others wrote after it stay, byte for byte."""

from nupes_sim.bench.cpu import write_section


def test_write_keeps_other_sections(tmp_path):
    p = tmp_path / "PERFORMANCE.md"
    others = "## Integer transformer (issue #10)\n\nrows\n\n# Performance of the CUDA backend\n\ncuda\n"
    p.write_text("# Performance of the CPU backend\n\nold table\n\n" + others)
    write_section(p, "# Performance of the CPU backend\n\nnew table\n")
    assert p.read_text() == "# Performance of the CPU backend\n\nnew table\n\n" + others
    p.write_text("# Performance of the CPU backend\n\nonly\n")
    write_section(p, "# Performance of the CPU backend\n\nnew\n")
    assert p.read_text() == "# Performance of the CPU backend\n\nnew\n"
    p.write_text("# Something else\n")
    write_section(p, "# Performance of the CPU backend\n\nnew\n")
    assert p.read_text() == "# Performance of the CPU backend\n\nnew\n\n# Something else\n"
