"""Interactive widgets for the lessons that also work headless (papermill, nbval, HTML export).

With no browser no callback ever fires, so every widget here runs its action once when shown and
prints a plain output; the controls' state (including streamed text) is saved in the notebook's
widget metadata, so the HTML export shows the controls too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lowbit.models.entries import R1_SAMPLING
from lowbit.run.generation import Generation, generate


class ChatWidget:
    """Prompt box, temperature / min_p / length sliders, a Generate button and streamed output."""

    def __init__(
        self,
        llm,
        prompt: str = "Why is the sky blue?",
        temperature: float = R1_SAMPLING["temp"],
        min_p: float = R1_SAMPLING["min_p"],
        n_predict: int = 64,
        seed: int = R1_SAMPLING["seed"],
        max_length: int = 512,
        chat: bool = True,
    ):
        import ipywidgets as w  # optional (the `notebooks` extra): imported on use

        self.llm, self.seed, self.chat = llm, seed, chat  # chat=False: raw text (a GGUF with no template)
        wide = w.Layout(width="90%")
        self.prompt = w.Textarea(value=prompt, description="prompt", layout=wide)
        self.temperature = w.FloatSlider(
            value=temperature, min=0.0, max=2.0, step=0.05, description="temperature"
        )
        self.min_p = w.FloatSlider(value=min_p, min=0.0, max=0.5, step=0.01, description="min_p")
        self.length = w.IntSlider(
            value=n_predict, min=1, max=max(max_length, n_predict), description="length"
        )
        self.button = w.Button(description="Generate", button_style="primary", icon="play")
        self.output = w.Textarea(
            value="", description="reply", disabled=True, layout=w.Layout(width="90%", height="8em")
        )
        self.status = w.Label(value="")
        self.button.on_click(lambda _button: self.run())
        self.box = w.VBox(
            [
                self.prompt,
                w.HBox([self.temperature, self.min_p, self.length]),
                self.button,
                self.output,
                self.status,
            ]
        )
        self.last: Generation | None = None

    def run(self) -> Generation:
        """Generate with the controls' current values, streaming into the output box."""
        self.button.disabled = True
        self.output.value = ""
        self.status.value = "generating…"

        def stream(piece: str) -> None:
            self.output.value += piece

        try:
            self.last = generate(
                self.llm,
                self.prompt.value,
                n_predict=self.length.value,
                temperature=self.temperature.value,
                min_p=self.min_p.value,
                seed=self.seed,
                on_text=stream,
                chat=self.chat,
            )
        finally:
            self.button.disabled = False
        g = self.last
        self.status.value = (
            f"{g.n_prompt} prompt tokens at {g.prompt_tokens_per_s:.1f} tok/s, "
            f"{g.n_generated} generated at {g.generation_tokens_per_s:.1f} tok/s ({g.stop_reason})"
        )
        return g

    def show(self, run_once: bool = True) -> Generation | None:
        """Display the controls; with `run_once` also generate now and print it (the headless output)."""
        from IPython.display import display  # optional (the `notebooks` extra): imported on use

        display(self.box)
        if not run_once:
            return None
        g = self.run()
        print(f"prompt: {self.prompt.value}\nreply:  {g.text}\n{self.status.value}")
        return g


def linked(action: Callable[..., Any], button: str | None = None, **controls: Any) -> Any:
    """Show `controls` (ipywidgets) that re-run `action(**values)` on change (or on a button click).

    `action` runs once right away with the current values and its output goes to the cell itself (what
    papermill, nbval and the HTML export see); later runs (browser only) go into an Output area below the
    controls. Returns the first run's result.
    """
    import ipywidgets as w  # optional (the `notebooks` extra): imported on use
    from IPython.display import display  # optional (the `notebooks` extra): imported on use

    out = w.Output()

    def rerun(*_args: Any) -> None:
        out.clear_output(wait=True)
        with out:
            action(**{name: c.value for name, c in controls.items()})

    parts = list(controls.values())
    if button:
        trigger = w.Button(description=button, button_style="primary")
        trigger.on_click(rerun)
        parts.append(trigger)
    else:
        for control in controls.values():
            control.observe(rerun, names="value")
    display(w.VBox([*parts, out]))
    return action(**{name: c.value for name, c in controls.items()})
