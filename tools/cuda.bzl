"""cuda_library: compiles .cu files with nvcc (one genrule per file) into a cc_library.

nvcc sees only the kernel sources and their plain headers (POD params structs); no
framework or Eigen header reaches it. Architectures come from `--define=cuda_archs=80,90`
(the .bazelrc default), so a build for one card is `--define=cuda_archs=90`.
"""

load("@rules_cc//cc:defs.bzl", "cc_library")

_NVCC = "/usr/local/cuda/bin/nvcc"

def cuda_library(name, srcs, hdrs = [], device_hdrs = [], deps = [], copts = [], visibility = None):
    """hdrs: plain headers (also exported to C++); device_hdrs: .cuh files only nvcc sees."""
    objs = []
    for src in srcs:
        base = src.replace("/", "_").rsplit(".", 1)[0]
        obj = "_%s_%s.o" % (name, base)
        native.genrule(
            name = "_%s_%s_nvcc" % (name, base),
            srcs = [src] + hdrs + device_hdrs,
            outs = [obj],
            cmd = " ".join([
                "archs=$$(echo $(cuda_archs) | tr ',' ' ');",
                "gencode=;",
                "for a in $$archs; do gencode=\"$$gencode -gencode arch=compute_$$a,code=sm_$$a\"; done;",
                _NVCC,
                "-std=c++20 -O3 -Xcompiler -fPIC --expt-relaxed-constexpr -lineinfo",
                "-I. -I$(GENDIR)",
                "$$gencode",
                " ".join(copts),
                "-c $(location %s) -o $@" % src,
            ]),
            message = "nvcc %s" % src,
        )
        objs.append(obj)
    cc_library(
        name = name,
        srcs = objs,
        hdrs = hdrs,
        deps = deps + ["@cuda//:cudart_static"],
        linkstatic = True,
        alwayslink = True,
        visibility = visibility,
    )
