"""Package discovery for the one distribution, ``tunewright``.

The import package is ``tunewright`` (folder ``tunewright/``). Each service keeps its own
top-level folder, ``services/<name>/``, and installs as ``tunewright.<name>``, so that the
generated gRPC code in ``services/<name>/v1/`` imports as the proto package
``tunewright.<name>.v1``. Built-in methods live in ``plugins/`` and install as
``tunewright.plugins``. Every package under these folders is found here, so a new service
or ``plugins/<method>/`` cannot be left out of the wheel by a forgotten list entry.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent

roots = {"tunewright": "tunewright", "tunewright.plugins": "plugins"}
for init in sorted(HERE.glob("services/*/__init__.py")):
    roots[f"tunewright.{init.parent.name}"] = f"services/{init.parent.name}"

packages = []
for package, folder in roots.items():
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(HERE / folder)]

setup(package_dir=roots, packages=packages)
