"""cuda_library: compiles .cu files with nvcc (one genrule per file) into a cc_library.

nvcc sees only the kernel sources and their plain headers (POD params structs); no
framework or Eigen header reaches it. Architectures come from `--define=cuda_archs=80,90`
(the .bazelrc default), so a build for one card is `--define=cuda_archs=90`.
"""

load("@rules_cc//cc:defs.bzl", "cc_library")

_NVCC = "/usr/local/cuda/bin/nvcc"

def cuda_library(name, srcs, hdrs = [], device_hdrs = [], common_hdrs = [], deps = [], copts = [], visibility = None):
    """hdrs: plain headers (also exported to C++); device_hdrs: .cuh files only nvcc sees.

    Each foo.cu is compiled with its own foo.h, the common_hdrs (plain headers every
    kernel may include, e.g. the dtype enum) and the device_hdrs, so that editing one
    kernel's header recompiles that kernel alone. A .cu that includes another kernel's
    header fails to compile here (the header is not among its inputs).
    """
    objs = []
    for src in srcs:
        stem = src.rsplit(".", 1)[0]
        own = [h for h in hdrs if h == stem + ".h" or h in common_hdrs]
        base = src.replace("/", "_").rsplit(".", 1)[0]
        obj = "_%s_%s.o" % (name, base)
        native.genrule(
            name = "_%s_%s_nvcc" % (name, base),
            srcs = [src] + own + device_hdrs,
            outs = [obj],
            # nvcc names its intermediate files after its process id; in Bazel's
            # sandbox every action runs as the same pid in its own namespace while
            # /tmp is shared, so concurrent compilations would overwrite each
            # other's files. Each compilation gets a private TMPDIR.
            cmd = " ".join([
                "tmp=$$(mktemp -d \"$${TMPDIR:-/tmp}/nvcc.XXXXXXXX\") || exit 1;",
                "trap 'rm -rf \"$$tmp\"' EXIT;",
                "export TMPDIR=\"$$tmp\";",
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
