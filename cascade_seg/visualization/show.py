"""Showing an image in a window, only where there is a screen (``--show`` of the tools).

On a headless machine (no ``DISPLAY`` / ``WAYLAND_DISPLAY`` on Linux, an OpenCV without GUI
support such as ``opencv-python-headless``, and no interactive matplotlib backend) nothing
is shown and :func:`show_image` says why, once.
"""
import os
import sys

from mmengine.logging import print_log

__all__ = ['display_available', 'show_image']

_said = set()


def display_available():
    """``(True, '')`` or ``(False, why)``: is there a screen to open a window on?"""
    if sys.platform.startswith('linux') and not (os.environ.get('DISPLAY') or
                                                 os.environ.get('WAYLAND_DISPLAY')):
        return False, 'no display (neither DISPLAY nor WAYLAND_DISPLAY is set)'
    return True, ''


def _show_cv2(img_bgr, name, wait_time):
    import cv2
    try:
        cv2.imshow(name, img_bgr)
        cv2.waitKey(0 if wait_time <= 0 else max(1, int(wait_time * 1000)))
        return True
    except cv2.error:  # a build without GUI support (opencv-python-headless)
        return False


def _show_matplotlib(img_bgr, name, wait_time):
    try:
        import matplotlib
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if matplotlib.get_backend().lower() in ('agg', 'pdf', 'svg', 'ps', 'cairo', 'template'):
        return False
    fig = plt.figure(name)
    fig.clf()
    plt.imshow(img_bgr[..., ::-1])
    plt.axis('off')
    if wait_time <= 0:
        plt.show()
    else:
        plt.pause(wait_time)
    return True


def show_image(img_bgr, name='image', wait_time=0):
    """Show a BGR image for ``wait_time`` seconds (0: until a key / the window is closed).

    Returns whether it was shown. When it cannot be, the reason is logged once per process
    (not per image)."""
    ok, why = display_available()
    if ok:
        if _show_cv2(img_bgr, name, wait_time) or _show_matplotlib(img_bgr, name, wait_time):
            return True
        why = ('OpenCV has no GUI support here (opencv-python-headless) and matplotlib has no '
               'interactive backend')
    if why not in _said:
        _said.add(why)
        print_log(f'--show: {why}, so nothing is shown; --show-dir DIR saves the drawings '
                  'instead', logger='current', level=30)
    return False
