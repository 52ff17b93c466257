//! Writing results: PNG (or JPEG) encoding with the generation parameters in a `parameters`
//! text chunk (the convention of the AUTOMATIC1111 / ComfyUI tools; a COM segment in a JPEG),
//! shared by `pixart generate` and `pixart serve`.
use pixart_core::Result;
use pixart_schedulers::SamplerKind;

use crate::components::PipelineComponents;
use crate::image::RgbImage;
use crate::request::ValidatedRequest;

/// The sampler a request runs with: the requested one, else the one `scheduler_config.json`
/// names; its CLI name (`dpm++`, ...), or an empty string when the config names none we know.
pub fn sampler_name(components: &PipelineComponents, requested: Option<SamplerKind>) -> String {
    requested
        .or_else(|| components.scheduler_config.class().map(SamplerKind::of_class))
        .map(|k| k.name().to_string())
        .unwrap_or_default()
}

/// The `parameters` text of image `k` of `request` (prompt, negative prompt, then one line of
/// settings). `model` is how the model is named in the file (the server passes a bare name, never
/// a path).
pub fn parameters_text(
    request: &ValidatedRequest,
    k: usize,
    image: &RgbImage,
    sampler: &str,
    model: &str,
    dtype: &str,
) -> String {
    let r = request;
    let prompt = r
        .prompts
        .get(k / r.images_per_prompt.max(1))
        .map(String::as_str)
        .unwrap_or_default();
    let strength = r
        .init_image
        .as_ref()
        .map(|i| {
            let mask = if i.mask.is_some() { ", Inpainting: true" } else { "" };
            format!(", Denoising strength: {}{mask}", i.strength)
        })
        .unwrap_or_default();
    // Two-pass upscaling: the first pass's settings and size, then the second's, so that
    // `--from` repeats both.
    let (size, hires) = match &r.upscale {
        Some(u) => (
            (r.out_width, r.out_height),
            format!(
                ", Hires upscale: {}, Hires steps: {}, Hires strength: {}",
                u.factor, u.steps, u.strength
            ),
        ),
        None => ((image.width, image.height), String::new()),
    };
    let control = match &r.control {
        Some(c) => {
            let mut s = String::new();
            if let Some(n) = &c.controlnet {
                s.push_str(&format!(", ControlNet: {n}"));
            }
            if let Some(p) = &c.source {
                s.push_str(&format!(", Control image: {p}"));
            }
            s.push_str(&format!(", Control scale: {}", c.scale));
            if let Some(p) = &c.preprocess {
                s.push_str(&format!(", Control preprocess: {p}"));
            }
            s
        }
        None => String::new(),
    };
    format!(
        "{prompt}\nNegative prompt: {}\nSteps: {}, Sampler: {sampler}, CFG scale: {}, Seed: {}, \
         Size: {}x{}, Model: {model}, Dtype: {dtype}, Resolution binning: {}{strength}{hires}{control}",
        r.negative_prompt,
        r.steps,
        r.guidance,
        r.seed.wrapping_add(k as u64),
        size.0,
        size.1,
        r.resolution_binning
    )
}

/// `text` with every control character but the line feed and the tab (NUL, CR, ESC, DEL, the
/// C1 range) replaced by U+FFFD: PNG text chunks may not hold NUL (nor, by the spec, other
/// controls), XML (the WebP's XMP) none but tab, LF and CR, and a bare CR would split the
/// `parameters` lines differently for other readers. Text without them is unchanged, so that
/// `--from` repeats a generation byte for byte.
pub fn printable_parameters(text: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(bad) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(text.chars().map(|c| if bad(c) { '\u{FFFD}' } else { c }).collect())
}

/// An 8-bit RGB PNG of `image` with `parameters` in a `tEXt` chunk (`iTXt` when it has
/// characters outside Latin-1).
pub fn encode_png(image: &RgbImage, parameters: &str) -> Result<Vec<u8>> {
    ImageFormat::Png.encode(image, parameters)
}

/// The file format of a generated image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageFormat {
    /// PNG, the parameters in a `parameters` text chunk.
    #[default]
    Png,
    /// Baseline JPEG at `quality` (1–100), the parameters in a COM segment.
    Jpeg { quality: u8 },
    /// Lossless WebP, the parameters in the XMP `dc:description`.
    Webp,
}

impl ImageFormat {
    /// The `Content-Type`.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg { .. } => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }

    /// The file of `image` with the generation `parameters` (its control characters but line
    /// feeds and tabs written as U+FFFD: [`printable_parameters`]).
    pub fn encode(self, image: &RgbImage, parameters: &str) -> Result<Vec<u8>> {
        let parameters = &printable_parameters(parameters);
        match self {
            Self::Png => image.to_png(Some(parameters)),
            Self::Jpeg { quality } => image.to_jpeg(quality, Some(parameters)),
            Self::Webp => image.to_webp(Some(parameters)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_of_a_prompt_are_not_written_raw() {
        let image = RgbImage::filled(8, 8, [9, 9, 9]);
        let text = "a\0cat\x07 in\r the\x1b[31m rain\u{85}\nNegative prompt: \tx\x7f\nSteps: 2";
        let want =
            "a\u{FFFD}cat\u{FFFD} in\u{FFFD} the\u{FFFD}[31m rain\u{FFFD}\nNegative prompt: \tx\u{FFFD}\nSteps: 2";
        for format in [ImageFormat::Png, ImageFormat::Jpeg { quality: 90 }, ImageFormat::Webp] {
            let bytes = format.encode(&image, text).unwrap();
            let got = crate::parameters::read_parameters(&bytes, "x").unwrap();
            assert_eq!(got.as_deref(), Some(want), "{format:?}");
            let p = crate::parameters::Parameters::parse(want).unwrap();
            assert_eq!(p.prompt, "a\u{FFFD}cat\u{FFFD} in\u{FFFD} the\u{FFFD}[31m rain\u{FFFD}");
        }
        // Plain text, tabs and line feeds included, is kept as it is.
        assert!(matches!(
            printable_parameters("a\tb\nc ü 猫"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn png_round_trip_keeps_pixels_and_parameters() {
        let image = RgbImage {
            width: 3,
            height: 2,
            data: (0..18).map(|v| (v * 14) as u8).collect(),
        };
        for text in ["a cat\nSteps: 4", "ein Kätzchen, 猫"] {
            let bytes = encode_png(&image, text).unwrap();
            let dec = png::Decoder::new(std::io::Cursor::new(&bytes));
            let mut reader = dec.read_info().unwrap();
            let info = reader.info();
            let got: Vec<String> = info
                .uncompressed_latin1_text
                .iter()
                .map(|c| c.text.clone())
                .chain(info.utf8_text.iter().map(|c| c.get_text().unwrap()))
                .collect();
            assert_eq!(got, vec![text.to_string()]);
            let mut buf = vec![0; reader.output_buffer_size().unwrap()];
            let frame = reader.next_frame(&mut buf).unwrap();
            assert_eq!((frame.width, frame.height), (3, 2));
            assert_eq!(&buf[..frame.buffer_size()], image.data.as_slice());
        }
    }
}
