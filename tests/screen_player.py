"""A minimal video player for the screen-capture tests: shows a video file's frames, at
the file's rate and looping, in a borderless Tk window at a given place on the X display.

    python tests/screen_player.py VIDEO X Y

It prints `showing` once the first frame is on the screen. Frames are decoded with PyAV
to RGB exactly as a test decodes them, and Tk draws them pixel for pixel (no scaling),
so what the screen shows can be compared with the file's frames.
"""
from __future__ import annotations

import sys
import tkinter

import av


def frames_rgb(path: str) -> tuple[list[bytes], float, int, int]:
    """Every frame as PPM bytes, the frame rate, width and height."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 25)
        images = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    height, width = images[0].shape[:2]
    header = f"P6 {width} {height} 255\n".encode()
    return [header + image.tobytes() for image in images], rate, width, height


def main(path: str, x: int, y: int) -> None:
    ppms, rate, width, height = frames_rgb(path)
    root = tkinter.Tk()
    root.overrideredirect(True)  # no border or title bar: the window is exactly the video
    root.geometry(f"{width}x{height}+{x}+{y}")
    label = tkinter.Label(root, borderwidth=0, highlightthickness=0)
    label.pack()
    state = {"n": 0, "image": None}

    def show() -> None:
        state["image"] = tkinter.PhotoImage(data=ppms[state["n"] % len(ppms)], format="PPM")
        label.configure(image=state["image"])
        if state["n"] == 0:
            root.update()  # drawn before we say so
            print("showing", flush=True)
        state["n"] += 1
        root.after(int(1000 / rate), show)

    show()
    root.mainloop()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
