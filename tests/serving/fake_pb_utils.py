"""A stand-in for triton_python_backend_utils, for unit tests of the sender and metrics.

It records what was sent and, for metrics, which thread touched each Metric: the real
python backend can crash when two threads update one Metric."""

import threading

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message, code=0):
        self._message, self._code = message, code

    def message(self):
        return self._message

    def code(self):
        return self._code


class Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, array

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class InferenceResponse:
    def __init__(self, output_tensors, error=None):
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


class ResponseSender:
    def __init__(self):
        self.sent = []  # (response, flags)
        self.cancelled = False
        self.threads = set()

    def send(self, response=None, flags=0):
        self.threads.add(threading.get_ident())
        self.sent.append((response, flags))

    def is_cancelled(self):
        self.threads.add(threading.get_ident())
        return self.cancelled

    @property
    def finals(self):
        return [r for r, f in self.sent if f & TRITONSERVER_RESPONSE_COMPLETE_FINAL]


class Metric:
    def __init__(self, labels, buckets=None):
        self.labels, self.buckets = labels, buckets
        self.value, self.observations, self.threads = 0, [], set()

    def _touch(self):
        self.threads.add(threading.get_ident())

    def increment(self, n):
        self._touch()
        self.value += n

    def set(self, v):
        self._touch()
        self.value = v

    def observe(self, v):
        self._touch()
        self.observations.append(v)


class MetricFamily:
    COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
    registry = []

    def __init__(self, name, description, kind):
        self.name, self.kind, self.metrics = name, kind, []
        MetricFamily.registry.append(self)

    def Metric(self, labels, buckets=None):  # noqa: N802 - the real API's name
        m = Metric(labels, buckets)
        self.metrics.append(m)
        return m
