"""`python -m cogrpo.train --config C [--set k=v ...] [--run-dir D]`: the entrypoint for `ray job submit`.

torch is imported here, before ray.init(): in a `--working-dir` job, ray.init() can re-create the working
directory, after which a first `import torch` fails to load its libraries (see the README).
"""

import sys

import torch  # noqa: F401  (import order matters, see above)

from cogrpo.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
