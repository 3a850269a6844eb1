"""policyd: declarative storage policies for scientific facility data."""

import warnings

__version__ = "0.1.0"

# pyfilesystem2 imports pkg_resources, which setuptools deprecates; the warning is
# noise for our users, not something they can act on.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
warnings.filterwarnings("ignore", message=".*pkg_resources.*", category=DeprecationWarning)
