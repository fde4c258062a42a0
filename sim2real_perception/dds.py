"""Fast DDS settings for camera-sized messages: the shared-memory profile shipped in config/.

Fast DDS's default shared-memory segment is 0.5 MB. A 1242x375 rgb8 frame (1.4 MB) does not
fit, so it falls back to fragmented UDP and best-effort frames are lost between processes
(about 0 of 200 arrived on the development machine). ``config/fastdds_large_shm.xml`` gives
each participant a 32 MB segment. Fast DDS reads ``FASTDDS_DEFAULT_PROFILES_FILE`` when the
first participant is created, so :func:`apply_default_profile` must run before
``rclpy.init``; a profile already set in the environment (or another RMW) always wins.
``launch/depth_seg.launch.py`` sets the variable to the shipped profile itself, so the log
line says whether the profile in the variable is the shipped one, not who set it.
"""
import os
from pathlib import Path

PROFILE_FILE = 'fastdds_large_shm.xml'
ENV_VAR = 'FASTDDS_DEFAULT_PROFILES_FILE'
LEGACY_ENV_VAR = 'FASTRTPS_DEFAULT_PROFILES_FILE'
PACKAGE = 'sim2real_perception'


def profile_path():
    """Return the shipped profile: source tree ``config/`` first, then the ament share dir."""
    here = Path(__file__).resolve().parent.parent / 'config' / PROFILE_FILE
    if here.is_file():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory
        share = Path(get_package_share_directory(PACKAGE)) / 'config' / PROFILE_FILE
        if share.is_file():
            return share
    except Exception:  # noqa: BLE001 - ament index absent or package not installed
        pass
    return None


def is_shipped_profile(path):
    """Tell whether ``path`` is the shipped profile (the file itself, or a copy of it)."""
    shipped = profile_path()
    try:
        if shipped is None:  # no ament index here: judge by the installed location
            parts = Path(path).parts
            return parts[-4:] == ('share', PACKAGE, 'config', PROFILE_FILE)
        return (os.path.samefile(path, shipped)
                or Path(path).read_bytes() == shipped.read_bytes())
    except OSError:
        return False


def apply_default_profile(environ=None):
    """Point Fast DDS at the shipped profile unless the user chose one; return a log line.

    Leaves the environment alone when ``FASTDDS_DEFAULT_PROFILES_FILE`` (or the legacy
    ``FASTRTPS_...``) is already set, or when ``RMW_IMPLEMENTATION`` is not Fast DDS.
    """
    env = os.environ if environ is None else environ
    for var in (ENV_VAR, LEGACY_ENV_VAR):
        value = env.get(var)
        if value and is_shipped_profile(value):
            return (f'Fast DDS profile {value} (the shipped large shared-memory profile, '
                    f'from {var})')
        if value:
            return (f'Fast DDS profile from {var}={value} (set in the environment, kept; '
                    f'not the shipped {PROFILE_FILE})')
    rmw = env.get('RMW_IMPLEMENTATION', '')
    if rmw and 'fastrtps' not in rmw and 'fastdds' not in rmw:
        return f'RMW_IMPLEMENTATION={rmw}: no Fast DDS profile applied'
    path = profile_path()
    if path is None:
        return f'{PROFILE_FILE} not found: Fast DDS defaults (large images may be lost)'
    env[ENV_VAR] = str(path)
    return f'Fast DDS profile {path} (large shared-memory segment) applied'
