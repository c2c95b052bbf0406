"""Build hook only (metadata lives in pyproject.toml): ship the TGI start-up hook
``plugins/specplug_tgi.pth`` at the wheel root, so that it lands in site-packages where
Python's ``site`` module runs it. Its one line reads an environment variable and does
nothing else unless ``SPECPLUG_TGI_ALGORITHM`` is set."""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = os.path.join("plugins", "specplug_tgi.pth")


class build_py_with_pth(build_py):
    def run(self):
        super().run()
        self.copy_file(PTH, os.path.join(self.build_lib, os.path.basename(PTH)), preserve_mode=False)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, os.path.basename(PTH))]


setup(cmdclass={"build_py": build_py_with_pth})
