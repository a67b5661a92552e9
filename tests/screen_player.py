"""A minimal video player for the screen-capture tests: shows a video file's frames, at
the file's rate and looping, in a borderless Tk window at a given place on the X display.

    python tests/screen_player.py VIDEO X Y

It prints `showing` once the first frame is on the screen. Frames are decoded with PyAV
to RGB as they are shown, exactly as a test decodes them, and Tk draws them pixel for
pixel (no scaling), so what the screen shows can be compared with the file's frames.
"""
from __future__ import annotations

import sys
import time
import tkinter

import av


def frames_ppm(path: str):
    """The file's frames as PPM bytes, decoded as they are shown, looping; first its frame rate."""
    with av.open(path) as container:
        yield float(container.streams.video[0].average_rate or 25)
    while True:
        with av.open(path) as container:
            for frame in container.decode(video=0):
                image = frame.to_ndarray(format="rgb24")
                yield f"P6 {image.shape[1]} {image.shape[0]} 255\n".encode() + image.tobytes()


def main(path: str, x: int, y: int) -> None:
    frames = frames_ppm(path)
    rate = next(frames)
    root = tkinter.Tk()
    root.overrideredirect(True)  # no border or title bar: the window is exactly the video
    root.geometry(f"+{x}+{y}")
    label = tkinter.Label(root, borderwidth=0, highlightthickness=0)
    label.pack()
    state = {"n": 0, "image": None, "t0": time.monotonic()}

    def show() -> None:
        state["image"] = tkinter.PhotoImage(data=next(frames), format="PPM")
        label.configure(image=state["image"])
        if state["n"] == 0:
            root.update()  # drawn before we say so
            print("showing", flush=True)
            state["t0"] = time.monotonic()
        state["n"] += 1
        # Frame n is due at n / rate from the first: decoding time does not slow the video down.
        root.after(max(1, int(1000 * (state["t0"] + state["n"] / rate - time.monotonic()))), show)

    show()
    root.mainloop()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
