#!/usr/bin/env bash
# Wheels (CPython 3.12, manylinux x86-64) of the packages agentfactory imports that the borrowed GPU
# image lacks, into .whl/ here (git-ignored): the device run installs them (bench/gpu_rl.sh,
# bench/gpu_quickstart.sh). The list: an import trace of the quickstart run with torch engines,
# less the image's packages (/work/.library/device/KINDS.md).
set -eu
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-extensions==4.16.0 \
  typing-inspection==0.4.5 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 \
  rpds-py==2026.9.1 jsonpatch==1.48 jsonpointer==3.12 simpleeval==1.0.8 faker==40.63.0 \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 math-verify==0.9.0 latex2sympy2_extended==1.11.0 \
  antlr4-python3-runtime==4.13.2
ls .whl
