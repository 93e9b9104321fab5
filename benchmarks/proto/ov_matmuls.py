"""Which MatMuls of an OpenVINO IR have int8 weights (FakeQuantize or an int8 Constant behind their weight input)."""
import sys

import openvino as ov


def origin(node, depth=0):
    t = node.get_type_name()
    if t == 'FakeQuantize':
        return 'FakeQuantize'
    if t == 'Constant':
        return f'Constant {node.get_element_type().get_type_name()}'
    if depth > 6 or node.get_input_size() == 0:
        return t
    return origin(node.input_value(0).get_node(), depth + 1)


def main(path):
    m = ov.Core().read_model(path)
    res = {}
    for n in m.get_ops():
        if n.get_type_name() == 'MatMul':
            k = (origin(n.input_value(0).get_node()), origin(n.input_value(1).get_node()))
            res[k] = res.get(k, 0) + 1
    for k, v in res.items():
        print(f'{v} MatMuls: activations from {k[0]}, weights from {k[1]}')


if __name__ == '__main__':
    main(sys.argv[1])
