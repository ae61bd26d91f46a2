"""User encoders: a build function named ``"<module>:<function>"`` or ``"<path/to/file.py>:<function>"``.

The module is imported (this *runs that module's code*) and the function
called as ``function(input_shape)``. It must return a ``keras.Model`` from
``[batch, H, W, C]`` float images in [0, 1] to ``[batch, dim]``. A model
that is not a functional model with exactly that static input shape (a
subclassed model, or one with ``None`` sizes) is wrapped in one, called on
``keras.Input(input_shape)``. ``synchronized_bn=True`` is rejected (build
``BatchNormalization(synchronized=True)`` in the function instead).
"""

import importlib
import importlib.util
import os
import sys

import keras

from supcon_tf.encoders._common import one_line, shape_tuple


def _import_user_module(spec, kind, module_name):
    """Imports (runs) the module of a user encoder: a dotted module on sys.path, or a .py file."""
    if kind == "file":
        path = os.path.abspath(module_name)
        if not os.path.isfile(path):
            raise ValueError(f"encoder {spec!r}: the file {path!r} does not exist")
        name = os.path.splitext(os.path.basename(path))[0]
        loaded = sys.modules.get(name)
        if loaded is not None:
            if os.path.abspath(getattr(loaded, "__file__", "") or "") == path:
                return loaded
            raise ValueError(
                f"encoder {spec!r}: a different module named {name!r} is already imported "
                f"({getattr(loaded, '__file__', None)!r}); rename the file"
            )
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # so that pickling / Keras serialisation can find its classes
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[name]
            raise ValueError(f"encoder {spec!r}: running {path!r} raised {one_line(error)}") from error
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ValueError(
                f"encoder {spec!r}: no module named {missing!r} on the Python path (add its folder to "
                "PYTHONPATH, or give the file: 'path/to/file.py:<function>')"
            ) from None
        raise ValueError(f"encoder {spec!r}: importing {module_name!r} raised {one_line(error)}") from error
    except Exception as error:
        raise ValueError(f"encoder {spec!r}: importing {module_name!r} raised {one_line(error)}") from error


def _static_input_shape(model):
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not isinstance(inputs, list) or len(inputs) != 1:
        return None
    return tuple(inputs[0].shape[1:])


def function_encoder(spec, kind, module_name, function_name, input_shape, synchronized, kwargs):
    """The encoder `spec` (`kind` "module" or "file", see ``parse_encoder``) built by the user's function."""
    input_shape = shape_tuple(input_shape)
    if kwargs:
        raise ValueError(
            f"encoder {spec!r} is built by its function alone: it takes no keyword arguments, "
            f"received: {', '.join(f'{k}={v!r}' for k, v in sorted(kwargs.items()))}"
        )
    if synchronized:
        raise ValueError(
            f"encoder {spec!r}: `synchronized_bn=True` is not applied to a user build function; build its "
            "layers with keras.layers.BatchNormalization(synchronized=True) instead"
        )
    module = _import_user_module(spec, kind, module_name)
    function = getattr(module, function_name, None)
    if function is None:
        raise ValueError(
            f"encoder {spec!r}: module {module_name!r} has no attribute {function_name!r}"
        )
    if not callable(function):
        raise ValueError(
            f"encoder {spec!r}: {function_name!r} is not callable (a {type(function).__name__})"
        )
    call = f"{function_name}({input_shape!r})"
    try:
        model = function(input_shape)
    except Exception as error:
        raise ValueError(f"encoder {spec!r}: {call} raised {one_line(error)}") from error
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"encoder {spec!r}: {call} must return a keras.Model from [batch, H, W, C] images in [0, 1] to "
            f"[batch, dim], returned a {type(model).__name__}"
        )
    static = _static_input_shape(model)
    if static is not None and (
        len(static) != 3 or any(s is not None and s != d for s, d in zip(static, input_shape))
    ):
        raise ValueError(
            f"encoder {spec!r}: {call} returned a model that takes inputs of shape {static}, "
            f"not the images' {input_shape}"
        )
    if static != input_shape:
        inputs = keras.Input(shape=input_shape, name="images")
        try:
            outputs = model(inputs)
        except Exception as error:
            raise ValueError(
                f"encoder {spec!r}: the model of {call} cannot be called on images of shape "
                f"{input_shape}: {one_line(error)}"
            ) from error
        model = keras.Model(inputs, outputs, name=f"{model.name}_encoder")
    output_shape = model.output_shape
    if (
        isinstance(output_shape, list)
        or len(output_shape) != 2
        or not isinstance(output_shape[-1], int)
    ):
        raise ValueError(
            f"encoder {spec!r}: {call} must return a model with outputs [batch, dim] (pool the "
            f"features), its output shape is {output_shape}"
        )
    return model

