"""tf.train.Example without TensorFlow: the message classes built from their
schema (tensorflow/core/example/{example,feature}.proto) with protobuf's own
descriptor API, so ArrayRecord files that TFDS `prepare` writes can be read."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _build():
  fd = descriptor_pb2.FileDescriptorProto(
    name="vdae/tf_example.proto", package="tensorflow", syntax="proto3"
  )

  def msg(name, *fields):
    m = fd.message_type.add(name=name)
    for number, (fname, ftype, label, type_name) in enumerate(fields, start=1):
      f = m.field.add(name=fname, number=number, type=ftype, label=label)
      if type_name:
        f.type_name = type_name
    return m

  rep, opt = _F.LABEL_REPEATED, _F.LABEL_OPTIONAL
  msg("BytesList", ("value", _F.TYPE_BYTES, rep, None))
  msg("FloatList", ("value", _F.TYPE_FLOAT, rep, None))
  msg("Int64List", ("value", _F.TYPE_INT64, rep, None))
  feature = msg(
    "Feature",
    ("bytes_list", _F.TYPE_MESSAGE, opt, ".tensorflow.BytesList"),
    ("float_list", _F.TYPE_MESSAGE, opt, ".tensorflow.FloatList"),
    ("int64_list", _F.TYPE_MESSAGE, opt, ".tensorflow.Int64List"),
  )
  feature.oneof_decl.add(name="kind")
  for f in feature.field:
    f.oneof_index = 0
  features = msg("Features")
  entry = features.nested_type.add(name="FeatureEntry")
  entry.options.map_entry = True
  entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=opt)
  entry.field.add(
    name="value", number=2, type=_F.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature"
  )
  features.field.add(
    name="feature",
    number=1,
    type=_F.TYPE_MESSAGE,
    label=rep,
    type_name=".tensorflow.Features.FeatureEntry",
  )
  msg("Example", ("features", _F.TYPE_MESSAGE, opt, ".tensorflow.Features"))
  pool = descriptor_pool.DescriptorPool()
  pool.Add(fd)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


Example = _build()
