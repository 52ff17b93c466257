//! Reading generation parameters back from an image this project wrote (`pixart generate
//! --from`): the `parameters` text ([`crate::parameters_text`]) from a PNG's `tEXt` / `iTXt` /
//! `zTXt` chunk, a JPEG's COM segment or a WebP's XMP `dc:description`, parsed into
//! [`Parameters`]. The text follows the AUTOMATIC1111 convention (prompt lines, a
//! `Negative prompt:` line, one line of `Key: value` settings), so images of those tools parse
//! too, as far as their keys are the same.
use pixart_core::{Error, Result};

/// The settings of one generated image.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parameters {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: Option<usize>,
    /// The sampler's CLI name (`dpm++`, ...).
    pub sampler: Option<String>,
    pub guidance: Option<f64>,
    /// The seed of this image (`SEED + k` for image k of a batch).
    pub seed: Option<u64>,
    /// The image's size.
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub model: Option<String>,
    pub dtype: Option<String>,
    pub resolution_binning: Option<bool>,
    /// Image to image: the strength, and whether a mask was used.
    pub strength: Option<f64>,
    pub inpainting: bool,
    /// Two-pass upscaling (`pixart generate --upscale`): the factor, the second pass's steps
    /// and strength.
    pub upscale: Option<f64>,
    pub upscale_steps: Option<usize>,
    pub upscale_strength: Option<f64>,
    /// ControlNet: its name, the control picture's path, the scale and the preprocessing.
    pub controlnet: Option<String>,
    pub control_image: Option<String>,
    pub control_scale: Option<f64>,
    pub control_preprocess: Option<String>,
}

fn bad(what: &str, msg: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("{what}: {msg}"))
}

/// The `parameters` text of an image file (PNG, JPEG or WebP), `None` when it has none.
/// `what` names the file in errors.
pub fn read_parameters(bytes: &[u8], what: &str) -> Result<Option<String>> {
    if bytes.starts_with(b"\x89PNG") {
        let reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .map_err(|e| bad(what, format!("not a readable PNG ({e})")))?;
        let info = reader.info();
        if let Some(t) = info.uncompressed_latin1_text.iter().find(|t| t.keyword == "parameters") {
            return Ok(Some(t.text.clone()));
        }
        if let Some(t) = info.compressed_latin1_text.iter().find(|t| t.keyword == "parameters") {
            return t.get_text().map(Some).map_err(|e| bad(what, e));
        }
        if let Some(t) = info.utf8_text.iter().find(|t| t.keyword == "parameters") {
            return t.get_text().map(Some).map_err(|e| bad(what, e));
        }
        return Ok(None);
    }
    if bytes.starts_with(&[0xFF, 0xD8]) {
        return Ok(jpeg_comment(bytes));
    }
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        let mut d = image_webp::WebPDecoder::new(std::io::Cursor::new(bytes))
            .map_err(|e| bad(what, format!("not a readable WebP ({e})")))?;
        let xmp = d.xmp_metadata().map_err(|e| bad(what, e))?;
        return Ok(xmp.and_then(|x| xmp_description(&String::from_utf8_lossy(&x))));
    }
    Err(bad(what, "not a PNG, JPEG or WebP file"))
}

/// The first COM segment of a JPEG, before the image data.
fn jpeg_comment(bytes: &[u8]) -> Option<String> {
    let mut i = 2;
    while i + 4 <= bytes.len() && bytes[i] == 0xFF {
        let marker = bytes[i + 1];
        if marker == 0xDA || marker == 0xD9 {
            return None; // start of scan / end of image
        }
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        let body = bytes.get(i + 4..i + 2 + len)?;
        if marker == 0xFE {
            return Some(String::from_utf8_lossy(body).into_owned());
        }
        i += 2 + len;
    }
    None
}

/// The `dc:description` of an XMP packet, XML entities decoded.
fn xmp_description(xmp: &str) -> Option<String> {
    let desc = &xmp[xmp.find("<dc:description")?..];
    let li = &desc[desc.find("<rdf:li")?..];
    let start = li.find('>')? + 1;
    let end = li.find("</rdf:li>")?;
    let raw = li.get(start..end)?;
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

impl Parameters {
    /// Parses a `parameters` text: the prompt (any number of lines), `Negative prompt: …`,
    /// then the settings line (`Steps: 20, Sampler: dpm++, CFG scale: 4.5, Seed: 7, Size:
    /// 1024x1024, …`). Unknown keys are ignored; a known key with a value that does not parse
    /// is an error naming it.
    pub fn parse(text: &str) -> Result<Self> {
        let lines: Vec<&str> = text.split('\n').collect();
        let settings_at = lines
            .iter()
            .rposition(|l| l.starts_with("Steps: "))
            .ok_or_else(|| bad("parameters", "no settings line (`Steps: …`)"))?;
        let (mut prompt_end, mut negative) = (settings_at, String::new());
        if let Some(n) = lines[..settings_at]
            .iter()
            .rposition(|l| l.starts_with("Negative prompt:"))
        {
            let rest: Vec<&str> = lines[n..settings_at].to_vec();
            negative = rest.join("\n")["Negative prompt:".len()..].trim_start().to_string();
            prompt_end = n;
        }
        let mut p = Self {
            prompt: lines[..prompt_end].join("\n"),
            negative_prompt: negative,
            ..Self::default()
        };
        // `Key: value` pairs separated by ", "; a piece without ": " belongs to the value
        // before it (a model name with a comma).
        let mut pairs: Vec<(String, String)> = Vec::new();
        for piece in lines[settings_at].split(", ") {
            match piece.split_once(": ") {
                Some((k, v)) if !k.is_empty() && !k.contains(' ') || KEYS.contains(&k) => {
                    pairs.push((k.to_string(), v.to_string()))
                }
                _ => match pairs.last_mut() {
                    Some((_, v)) => {
                        v.push_str(", ");
                        v.push_str(piece);
                    }
                    None => return Err(bad("parameters", format!("cannot read settings `{piece}`"))),
                },
            }
        }
        for (k, v) in pairs {
            let num = |what: &str| bad("parameters", format!("`{what}: {v}` is not a number"));
            match k.as_str() {
                "Steps" => p.steps = Some(v.parse().map_err(|_| num("Steps"))?),
                "Sampler" => p.sampler = Some(v).filter(|s| !s.is_empty()),
                "CFG scale" => p.guidance = Some(v.parse().map_err(|_| num("CFG scale"))?),
                "Seed" => p.seed = Some(v.parse().map_err(|_| num("Seed"))?),
                "Size" => {
                    let (w, h) = v
                        .split_once('x')
                        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
                        .ok_or_else(|| bad("parameters", format!("`Size: {v}` is not WIDTHxHEIGHT")))?;
                    (p.width, p.height) = (Some(w), Some(h));
                }
                "Model" => p.model = Some(v),
                "Dtype" => p.dtype = Some(v),
                "Resolution binning" => p.resolution_binning = Some(v == "true"),
                "Denoising strength" => p.strength = Some(v.parse().map_err(|_| num("Denoising strength"))?),
                "Inpainting" => p.inpainting = v == "true",
                "Hires upscale" => p.upscale = Some(v.parse().map_err(|_| num("Hires upscale"))?),
                "Hires steps" => p.upscale_steps = Some(v.parse().map_err(|_| num("Hires steps"))?),
                "Hires strength" => p.upscale_strength = Some(v.parse().map_err(|_| num("Hires strength"))?),
                "ControlNet" => p.controlnet = Some(v),
                "Control image" => p.control_image = Some(v),
                "Control scale" => p.control_scale = Some(v.parse().map_err(|_| num("Control scale"))?),
                "Control preprocess" => p.control_preprocess = Some(v),
                _ => {}
            }
        }
        Ok(p)
    }
}

/// The settings keys of more than one word.
const KEYS: [&str; 10] = [
    "Control image",
    "Control scale",
    "Control preprocess",
    "Hires upscale",
    "Hires steps",
    "Hires strength",
    "CFG scale",
    "Resolution binning",
    "Denoising strength",
    "Negative prompt",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::RgbImage;

    const TEXT: &str = "a red fox\nin the snow\nNegative prompt: blurry, low quality\nSteps: 25, Sampler: sa-solver, \
CFG scale: 4.5, Seed: 18446744073709551615, Size: 1024x768, Model: PixArt-alpha/PixArt-Sigma-XL-2-1024-MS, \
Dtype: bf16, Resolution binning: true, Denoising strength: 0.6, Inpainting: true, Hires upscale: 1.5, \
Hires steps: 12, Hires strength: 0.4, ControlNet: cn/canny, Control image: edges, v2.png, Control scale: 0.7, \
Control preprocess: canny:100:200";

    #[test]
    fn parses_every_setting() {
        let p = Parameters::parse(TEXT).unwrap();
        assert_eq!(
            p,
            Parameters {
                prompt: "a red fox\nin the snow".into(),
                negative_prompt: "blurry, low quality".into(),
                steps: Some(25),
                sampler: Some("sa-solver".into()),
                guidance: Some(4.5),
                seed: Some(u64::MAX),
                width: Some(1024),
                height: Some(768),
                model: Some("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS".into()),
                dtype: Some("bf16".into()),
                resolution_binning: Some(true),
                strength: Some(0.6),
                inpainting: true,
                upscale: Some(1.5),
                upscale_steps: Some(12),
                upscale_strength: Some(0.4),
                controlnet: Some("cn/canny".into()),
                control_image: Some("edges, v2.png".into()),
                control_scale: Some(0.7),
                control_preprocess: Some("canny:100:200".into()),
            }
        );
        // A model name with a comma stays whole; no negative prompt line is an empty one.
        let p = Parameters::parse("cat\nSteps: 2, Sampler: ddim, CFG scale: 1, Seed: 3, Size: 64x64, Model: my, model")
            .unwrap();
        assert_eq!(
            (p.model.as_deref(), p.negative_prompt.as_str()),
            (Some("my, model"), "")
        );
        assert!(Parameters::parse("just a prompt")
            .unwrap_err()
            .to_string()
            .contains("no settings line"));
        assert!(Parameters::parse("x\nSteps: many")
            .unwrap_err()
            .to_string()
            .contains("`Steps: many` is not a number"));
    }

    #[test]
    fn reads_the_text_back_from_png_jpeg_and_webp() {
        let img = RgbImage::filled(8, 8, [10, 20, 30]);
        let unicode = "un renard roux — «neige» & <ciel>\nNegative prompt: \nSteps: 2, Seed: 1";
        for text in [TEXT, unicode] {
            for bytes in [
                img.to_png(Some(text)).unwrap(),
                img.to_jpeg(90, Some(text)).unwrap(),
                img.to_webp(Some(text)).unwrap(),
            ] {
                assert_eq!(read_parameters(&bytes, "x").unwrap().as_deref(), Some(text));
            }
        }
        assert_eq!(read_parameters(&img.to_png(None).unwrap(), "x").unwrap(), None);
        assert_eq!(read_parameters(&img.to_jpeg(90, None).unwrap(), "x").unwrap(), None);
        assert_eq!(read_parameters(&img.to_webp(None).unwrap(), "x").unwrap(), None);
        assert!(read_parameters(b"GIF89a", "f.gif")
            .unwrap_err()
            .to_string()
            .contains("f.gif"));
    }
}
